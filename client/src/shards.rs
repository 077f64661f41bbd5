//! Shard streams for data loaders: a dataset's files (shards) assigned to
//! ranks deterministically, a new order every epoch, fetched and verified
//! ahead of the consumer under a memory budget, and resumable from a small
//! cursor.
//!
//! The assignment is a pure function of the listing's content, the seed,
//! the epoch and the world size: the shards are shuffled by a generator
//! seeded from (seed, epoch, dataset content id), padded by wrapping (or
//! cut, with `drop_remainder`) to a multiple of the world size, and rank r
//! takes positions r, r + w, r + 2w, ... Every rank gets as many shards as
//! every other, so none waits at the end of an epoch.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use shardfs_proto::ChunkId;
use shardfs_proto::meta::v1 as pb;
use tokio::sync::Semaphore;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::read::{ChunkData, FileLayout};

/// Where a stream resumes: small, serializable (JSON), taken with
/// [`ShardStream::state`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Shards of this rank already yielded in this epoch.
    pub position: u64,
    pub seed: u64,
    pub world: u64,
    pub rank: u64,
    pub drop_remainder: bool,
    /// Whether the epoch's order is shuffled (else it is the sorted
    /// listing's order).
    #[serde(default = "shuffled_by_default")]
    pub shuffle: bool,
    /// The dataset's content id (hex): a cursor only resumes the dataset
    /// it was taken from.
    pub dataset: String,
    /// Cursors written before `resizes` existed: a global position of the
    /// epoch's order the stream started from. 0 in new cursors.
    #[serde(default)]
    pub base: u64,
    /// The world size changes this epoch went through before this stream,
    /// oldest first: each says which shards the ranks of then had yielded.
    #[serde(default)]
    pub resizes: Vec<Resize>,
}

fn shuffled_by_default() -> bool {
    true
}

/// A change of world size mid-epoch: the old world, and how many of its
/// shards each old rank had yielded (by rank). The shards no old rank had
/// yielded are split across the new ranks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub world: u64,
    pub drop_remainder: bool,
    pub positions: Vec<u64>,
}

/// What decides an epoch's assignment of shards to ranks.
#[derive(Debug, Clone, Copy)]
pub struct Assignment<'a> {
    /// Shards in the listing.
    pub shards: usize,
    pub dataset: &'a ChunkId,
    pub seed: u64,
    pub epoch: u64,
    pub world: u64,
    pub drop_remainder: bool,
    /// Shuffle the epoch's order (else: the sorted listing's order).
    pub shuffle: bool,
    /// Global position of the epoch's shuffled order to start from (0 but
    /// for old cursors).
    pub base: u64,
    /// World size changes earlier in the epoch, oldest first.
    pub resizes: &'a [Resize],
}

impl Assignment<'_> {
    /// The shards (indexes into the sorted listing) rank `rank` reads, in
    /// order.
    pub fn rank(&self, rank: u64) -> Vec<usize> {
        let w = self.world.max(1) as usize;
        padded(&self.remaining(), w, self.drop_remainder)
            .into_iter()
            .skip(rank as usize)
            .step_by(w)
            .collect()
    }

    /// The shards left for this world to split, in the epoch's order: all
    /// of them, less those yielded before each resize (a remainder an old
    /// world dropped was not yielded: it stays).
    fn remaining(&self) -> Vec<usize> {
        let order = if self.shuffle {
            shuffled(self.shards, self.dataset, self.seed, self.epoch)
        } else {
            (0..self.shards).collect()
        };
        let mut rest: Vec<usize> = order.into_iter().skip(self.base as usize).collect();
        for resize in self.resizes {
            let w = resize.world.max(1) as usize;
            let assigned = padded(&rest, w, resize.drop_remainder);
            // Padded slot j went to rank j % w as its (j / w)th shard.
            let yielded =
                |j: usize| ((j / w) as u64) < resize.positions.get(j % w).copied().unwrap_or(0);
            let done: std::collections::HashSet<usize> = assigned
                .iter()
                .enumerate()
                .filter(|(j, _)| yielded(*j))
                .map(|(_, shard)| *shard)
                .collect();
            rest.retain(|shard| !done.contains(shard));
        }
        rest
    }
}

/// `shards` cut (`drop_remainder`) or padded by wrapping to a multiple of
/// `world`.
fn padded(shards: &[usize], world: usize, drop_remainder: bool) -> Vec<usize> {
    if drop_remainder {
        let keep = shards.len() / world * world;
        shards[..keep].to_vec()
    } else if shards.is_empty() {
        Vec::new()
    } else {
        let total = shards.len().div_ceil(world) * world;
        (0..total).map(|i| shards[i % shards.len()]).collect()
    }
}

/// The epoch's order of all shards: a Fisher-Yates shuffle driven by
/// BLAKE3's output stream keyed by (seed, epoch, dataset).
fn shuffled(shards: usize, dataset: &ChunkId, seed: u64, epoch: u64) -> Vec<usize> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shardfs shard order v1");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&epoch.to_le_bytes());
    hasher.update(dataset.as_bytes());
    let mut stream = hasher.finalize_xof();
    let mut next = || {
        let mut word = [0u8; 8];
        stream.fill(&mut word);
        u64::from_le_bytes(word)
    };
    let mut order: Vec<usize> = (0..shards).collect();
    for i in (1..shards).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The content id of a listing: BLAKE3 over each path and file content id.
pub fn dataset_id(files: &[(String, ChunkId)]) -> ChunkId {
    let mut hasher = blake3::Hasher::new();
    for (path, content) in files {
        hasher.update(&(path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update(content.as_bytes());
    }
    ChunkId::from_array(*hasher.finalize().as_bytes())
}

/// Builds a shard stream (`client.shards(prefix)...stream()`).
pub struct ShardsBuilder {
    client: Client,
    source: Source,
    rank: u64,
    world: u64,
    epoch: u64,
    seed: u64,
    drop_remainder: bool,
    shuffle: bool,
    prefetch_bytes: u64,
    parallel_chunks: usize,
    resume: Resume,
}

/// What a stream continues from.
enum Resume {
    Nothing,
    /// One cursor, standing for every rank of its world.
    One(Cursor),
    /// Every rank's cursor of the old world.
    All(Vec<Cursor>),
}

enum Source {
    Prefix(String),
    List(Vec<String>),
}

impl Client {
    /// The files under `prefix` (a directory, walked recursively) as shards.
    pub fn shards(&self, prefix: &str) -> ShardsBuilder {
        self.shards_from(Source::Prefix(prefix.to_string()))
    }

    /// These files as shards (their order does not matter: it is sorted).
    pub fn shard_list(&self, paths: Vec<String>) -> ShardsBuilder {
        self.shards_from(Source::List(paths))
    }

    fn shards_from(&self, source: Source) -> ShardsBuilder {
        ShardsBuilder {
            client: self.clone(),
            source,
            rank: 0,
            world: 1,
            epoch: 0,
            seed: 0,
            drop_remainder: false,
            shuffle: true,
            prefetch_bytes: 1 << 30,
            parallel_chunks: 16,
            resume: Resume::Nothing,
        }
    }
}

impl ShardsBuilder {
    pub fn rank(mut self, rank: u64) -> Self {
        self.rank = rank;
        self
    }
    pub fn world(mut self, world: u64) -> Self {
        self.world = world;
        self
    }
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Cut the shards that do not divide evenly instead of wrapping around.
    pub fn drop_remainder(mut self, drop: bool) -> Self {
        self.drop_remainder = drop;
        self
    }
    /// Shuffle each epoch's order of shards, from (seed, epoch) (the
    /// default); without, every epoch goes in path order.
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }
    /// Bytes of shards fetched ahead of the consumer (default 1 GiB).
    pub fn prefetch_bytes(mut self, bytes: u64) -> Self {
        self.prefetch_bytes = bytes;
        self
    }
    /// Chunk requests in flight at once, across the shards being fetched
    /// (default 16). More only adds memory and connections once the
    /// network or the CPU is busy.
    pub fn parallel_chunks(mut self, n: usize) -> Self {
        self.parallel_chunks = n.max(1);
        self
    }
    /// Continues from a cursor taken with [`ShardStream::state`] (its epoch
    /// and seed win). With the same world size, rank r yields exactly the
    /// rest of its shards. With another world size, every old rank is taken
    /// to have reached this cursor's position (a synchronous checkpoint);
    /// when they stopped at different positions, use
    /// [`resume_all`](Self::resume_all).
    pub fn resume(mut self, cursor: Cursor) -> Self {
        self.resume = Resume::One(cursor);
        self
    }

    /// Continues from the cursors of every rank of the old world (one per
    /// rank, any order): the shards no old rank had yielded are split across
    /// the new world, each exactly once (apart from padding), however far
    /// each old rank had got. With the same world size, rank r resumes from
    /// the old rank r's cursor.
    pub fn resume_all(mut self, cursors: Vec<Cursor>) -> Self {
        self.resume = Resume::All(cursors);
        self
    }

    /// Lists the dataset and fetches its chunk maps (once), then streams.
    pub async fn stream(self) -> Result<ShardStream> {
        if self.world == 0 || self.rank >= self.world {
            return Err(ClientError::InvalidArgument(format!(
                "rank {} of world {}: the rank must be below the world size (at least 1)",
                self.rank, self.world
            )));
        }
        let mut files: Vec<(String, pb::FileInfo)> = match &self.source {
            Source::Prefix(prefix) => {
                let (_, files) = self.client.walk(prefix).await?;
                files
                    .into_iter()
                    .map(|f| (f.path.to_string(), f.info))
                    .collect()
            }
            Source::List(paths) => {
                let mut paths = paths.clone();
                paths.sort();
                paths.dedup();
                futures::stream::iter(paths)
                    .map(|path| {
                        let client = self.client.clone();
                        async move {
                            let entry = client.stat(&path).await?;
                            let info = entry.file.ok_or_else(|| {
                                ClientError::InvalidArgument(format!("{path}: is a directory"))
                            })?;
                            Ok((path, info))
                        }
                    })
                    .buffered(16)
                    .collect::<Vec<Result<_>>>()
                    .await
                    .into_iter()
                    .collect::<Result<_>>()?
            }
        };
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let layouts = self.client.layouts_of(files).await?;
        let listing: Vec<(String, ChunkId)> = layouts
            .iter()
            .map(|l| (l.path.clone(), content_of(l)))
            .collect();
        let dataset = dataset_id(&listing);
        let start = self.start(&dataset)?;
        let Cursor {
            epoch,
            seed,
            position,
            base,
            resizes,
            shuffle,
            ..
        } = start;
        let order = Assignment {
            shards: layouts.len(),
            dataset: &dataset,
            seed,
            epoch,
            world: self.world,
            drop_remainder: self.drop_remainder,
            shuffle,
            base,
            resizes: &resizes,
        }
        .rank(self.rank);
        let layouts = Arc::new(layouts);
        let mine: Vec<usize> = order.into_iter().skip(position as usize).collect();
        let planned = (
            mine.len() as u64,
            mine.iter().map(|&i| layouts[i].size).sum::<u64>(),
        );
        let average = layouts.iter().map(|l| l.size).sum::<u64>() / (layouts.len().max(1) as u64);
        let ahead = (self.prefetch_bytes / average.max(1)).clamp(1, 64) as usize;
        let client = self.client.clone();
        let in_flight = Arc::new(Semaphore::new(self.parallel_chunks));
        let fetches = futures::stream::iter(mine)
            .map(move |index| {
                let client = client.clone();
                let layouts = layouts.clone();
                let in_flight = in_flight.clone();
                async move {
                    let layout = &layouts[index];
                    let data = fetch_whole(&client, layout, &in_flight).await?;
                    Ok((layout.path.clone(), data))
                }
            })
            .buffered(ahead)
            .boxed();
        Ok(ShardStream {
            cursor: Cursor {
                epoch,
                position,
                seed,
                world: self.world,
                rank: self.rank,
                drop_remainder: self.drop_remainder,
                shuffle,
                dataset: dataset.to_hex(),
                base,
                resizes,
            },
            fetches,
            planned,
        })
    }

    /// Where this stream starts: the cursor it continues from (a fresh
    /// start, the rank's own cursor, or a new resize).
    fn start(&self, dataset: &ChunkId) -> Result<Cursor> {
        let fresh = Cursor {
            epoch: self.epoch,
            position: 0,
            seed: self.seed,
            world: self.world,
            rank: self.rank,
            drop_remainder: self.drop_remainder,
            shuffle: self.shuffle,
            dataset: dataset.to_hex(),
            base: 0,
            resizes: Vec::new(),
        };
        let cursors: &[Cursor] = match &self.resume {
            Resume::Nothing => return Ok(fresh),
            Resume::One(cursor) => std::slice::from_ref(cursor),
            Resume::All(cursors) => cursors,
        };
        let bad = |why: String| Err(ClientError::InvalidArgument(why));
        let Some(first) = cursors.first() else {
            return bad("resume_all was given no cursors".into());
        };
        if first.dataset != fresh.dataset {
            return bad(
                "the cursor was taken from another dataset (its listing or contents changed)"
                    .into(),
            );
        }
        // Cursors of one stream differ only in rank and position.
        let stream_of = |c: &Cursor| Cursor {
            rank: 0,
            position: 0,
            ..c.clone()
        };
        let same_stream = |c: &Cursor| stream_of(c) == stream_of(first);
        if !cursors.iter().all(same_stream) {
            return bad("the cursors come from different streams (dataset, epoch, seed, world size or resizes differ)".into());
        }
        // Each old rank's position: one cursor stands for every rank;
        // resume_all needs exactly one cursor per rank.
        let positions: Vec<u64> = match &self.resume {
            Resume::All(_) => {
                let mut positions = vec![None; first.world as usize];
                for cursor in cursors {
                    match positions.get_mut(cursor.rank as usize) {
                        Some(slot @ None) => *slot = Some(cursor.position),
                        Some(Some(_)) => {
                            return bad(format!("two cursors of rank {} were given", cursor.rank));
                        }
                        None => {
                            return bad(format!(
                                "a cursor of rank {} does not belong to a world of {}",
                                cursor.rank, first.world
                            ));
                        }
                    }
                }
                if let Some(missing) = positions.iter().position(Option::is_none) {
                    return bad(format!(
                        "resume_all needs every old rank's cursor; rank {missing} of {} is missing",
                        first.world
                    ));
                }
                positions.into_iter().flatten().collect()
            }
            _ => vec![first.position; first.world as usize],
        };
        let resumed = Cursor {
            position: 0,
            ..first.clone()
        };
        if first.world == self.world && first.drop_remainder == self.drop_remainder {
            return Ok(Cursor {
                position: positions[self.rank as usize],
                rank: self.rank,
                ..resumed
            });
        }
        let mut resizes = first.resizes.clone();
        resizes.push(Resize {
            world: first.world,
            drop_remainder: first.drop_remainder,
            positions,
        });
        Ok(Cursor {
            world: self.world,
            rank: self.rank,
            drop_remainder: self.drop_remainder,
            resizes,
            ..resumed
        })
    }
}

/// A file's content id, as the metaserver computes it (chunk ids and
/// lengths), from its layout.
pub(crate) fn content_of(layout: &FileLayout) -> ChunkId {
    let mut hasher = blake3::Hasher::new();
    for chunk in &layout.chunks {
        hasher.update(chunk.id.as_bytes());
        hasher.update(&chunk.length.to_le_bytes());
    }
    ChunkId::from_array(*hasher.finalize().as_bytes())
}

/// Every chunk of a file, fetched in parallel (as `in_flight` allows:
/// permits go first come, first served, so earlier shards come first) and
/// verified, in one buffer.
async fn fetch_whole(client: &Client, layout: &FileLayout, in_flight: &Semaphore) -> Result<Bytes> {
    // (By index: a closure over borrowed spans cannot go into a boxed stream.)
    let chunks: Vec<_> = futures::stream::iter(0..layout.chunks.len())
        .map(|i| async move {
            let _permit = in_flight.acquire().await.expect("never closed");
            client.spawn_fetch(&layout.path, &layout.chunks[i], i).await
        })
        .buffered(layout.chunks.len().max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    // Copying a shard of many MiB is CPU work: off the async workers.
    let (client, path, size) = (client.clone(), layout.path.clone(), layout.size);
    tokio::task::spawn_blocking(move || join_pieces(&client, &path, chunks, size))
        .await
        .map_err(|e| ClientError::InvalidArgument(format!("joining a shard failed: {e}")))?
}

/// One `Bytes` of the chunks' pieces: as they are when there is one, else
/// copied into a pooled buffer.
fn join_pieces(client: &Client, path: &str, chunks: Vec<ChunkData>, size: u64) -> Result<Bytes> {
    let total: u64 = chunks.iter().map(ChunkData::len).sum();
    if total != size {
        return Err(ClientError::InvalidArgument(format!(
            "{path}: its chunks hold {total} bytes, but the file is {size} bytes"
        )));
    }
    let mut pieces = chunks.into_iter().flat_map(|c| c.pieces);
    let Some(first) = pieces.next() else {
        return Ok(Bytes::new());
    };
    if first.len() as u64 == size {
        return Ok(first);
    }
    let mut out = client.inner.buffers.take(size as usize);
    let target = out.as_mut_slice();
    target[..first.len()].copy_from_slice(&first);
    let mut at = first.len();
    for piece in pieces {
        target[at..at + piece.len()].copy_from_slice(&piece);
        at += piece.len();
    }
    Ok(out.freeze())
}

type Fetches = futures::stream::BoxStream<'static, Result<(String, Bytes)>>;

/// Yields `(path, bytes)` of this rank's shards in order, each verified.
pub struct ShardStream {
    cursor: Cursor,
    fetches: Fetches,
    /// Shards and bytes this stream had to yield when it started.
    planned: (u64, u64),
}

impl ShardStream {
    /// The shards and bytes this stream was to yield when it started (the
    /// rest of its epoch): what a progress bar counts towards.
    pub fn planned(&self) -> (u64, u64) {
        self.planned
    }

    /// The next shard, or None at the end of the epoch.
    pub async fn next(&mut self) -> Option<Result<(String, Bytes)>> {
        let item = self.fetches.next().await?;
        if item.is_ok() {
            self.cursor.position += 1;
        }
        Some(item)
    }

    /// The next shard as an async reader (over its verified bytes, no
    /// copy), for consumers that parse as they go (tar, record files).
    pub async fn next_reader(&mut self) -> Option<Result<(String, std::io::Cursor<Bytes>)>> {
        Some(
            self.next()
                .await?
                .map(|(path, bytes)| (path, std::io::Cursor::new(bytes))),
        )
    }

    /// Where to resume after the shards yielded so far.
    pub fn state(&self) -> Cursor {
        self.cursor.clone()
    }
}

impl Stream for ShardStream {
    type Item = Result<(String, Bytes)>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let poll = self.fetches.poll_next_unpin(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &poll {
            self.cursor.position += 1;
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn id() -> ChunkId {
        ChunkId::of(b"dataset")
    }

    #[allow(clippy::too_many_arguments)]
    fn assign(
        shards: usize,
        dataset: &ChunkId,
        seed: u64,
        epoch: u64,
        world: u64,
        rank: u64,
        drop_remainder: bool,
        resizes: &[Resize],
    ) -> Vec<usize> {
        Assignment {
            shards,
            dataset,
            seed,
            epoch,
            world,
            drop_remainder,
            shuffle: true,
            base: 0,
            resizes,
        }
        .rank(rank)
    }

    #[test]
    fn ranks_cover_every_shard_exactly_once_without_padding() {
        for (n, w) in [(12usize, 3u64), (10, 5), (7, 7), (100, 4)] {
            let mut all = Vec::new();
            for r in 0..w {
                let mine = assign(n, &id(), 42, 3, w, r, false, &[]);
                assert_eq!(mine.len(), n / w as usize);
                all.extend(mine);
            }
            all.sort();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn uneven_counts_pad_or_drop_and_ranks_stay_equal() {
        let (n, w) = (10usize, 4u64);
        let padded: Vec<Vec<usize>> = (0..w)
            .map(|r| assign(n, &id(), 1, 0, w, r, false, &[]))
            .collect();
        assert!(padded.iter().all(|m| m.len() == 3));
        let covered: BTreeSet<usize> = padded.iter().flatten().copied().collect();
        assert_eq!(covered.len(), n, "padding wraps; nothing is left out");
        let dropped: Vec<Vec<usize>> = (0..w)
            .map(|r| assign(n, &id(), 1, 0, w, r, true, &[]))
            .collect();
        assert!(dropped.iter().all(|m| m.len() == 2));
        let distinct: BTreeSet<usize> = dropped.iter().flatten().copied().collect();
        assert_eq!(distinct.len(), 8, "dropping never repeats a shard");
    }

    #[test]
    fn same_inputs_same_order_and_epochs_reorder() {
        let a = assign(50, &id(), 7, 1, 2, 0, false, &[]);
        assert_eq!(a, assign(50, &id(), 7, 1, 2, 0, false, &[]));
        assert_ne!(a, assign(50, &id(), 7, 2, 2, 0, false, &[]));
        assert_ne!(a, assign(50, &id(), 8, 1, 2, 0, false, &[]));
        assert_ne!(
            a,
            assign(50, &ChunkId::of(b"other"), 7, 1, 2, 0, false, &[])
        );
    }

    /// Old ranks that stopped at different positions: the new world gets
    /// exactly the shards none of them yielded, each once (no padding
    /// needed here), and a second resize composes with the first.
    #[test]
    fn resuming_with_another_world_splits_the_rest() {
        let n = 24usize;
        let old: Vec<Vec<usize>> = (0..3)
            .map(|r| assign(n, &id(), 9, 0, 3, r, false, &[]))
            .collect();
        let positions = vec![5u64, 2, 7];
        let yielded: BTreeSet<usize> = old
            .iter()
            .zip(&positions)
            .flat_map(|(mine, p)| mine[..*p as usize].iter().copied())
            .collect();
        let resize = Resize {
            world: 3,
            drop_remainder: false,
            positions,
        };
        let new: Vec<Vec<usize>> = (0..2)
            .map(|r| assign(n, &id(), 9, 0, 2, r, false, std::slice::from_ref(&resize)))
            .collect();
        let got: Vec<usize> = new.iter().flatten().copied().collect();
        let got_set: BTreeSet<usize> = got.iter().copied().collect();
        assert_eq!(got.len(), 10, "10 left, 5 + 5");
        assert_eq!(got_set.len(), 10);
        assert!(got_set.is_disjoint(&yielded));
        assert_eq!(got_set.len() + yielded.len(), n);

        // The 2 new ranks stop at 4 and 1; 3 ranks take the last 5.
        let again = Resize {
            world: 2,
            drop_remainder: false,
            positions: vec![4, 1],
        };
        let second: BTreeSet<usize> = new[0][..4].iter().chain(&new[1][..1]).copied().collect();
        let resizes = [resize, again];
        let last: Vec<usize> = (0..3)
            .flat_map(|r| assign(n, &id(), 9, 0, 3, r, false, &resizes))
            .collect();
        assert_eq!(last.len(), 6, "5 left, padded to 2 + 2 + 2");
        let last_set: BTreeSet<usize> = last.iter().copied().collect();
        assert_eq!(last_set.len(), 5);
        assert!(last_set.is_disjoint(&yielded) && last_set.is_disjoint(&second));
        assert_eq!(last_set.len() + second.len() + yielded.len(), n);
    }

    /// A remainder the old world dropped was never yielded: the new world
    /// gets it.
    #[test]
    fn a_dropped_remainder_goes_to_the_new_world() {
        let n = 10usize;
        let old: Vec<Vec<usize>> = (0..4)
            .map(|r| assign(n, &id(), 3, 0, 4, r, true, &[]))
            .collect();
        let yielded: BTreeSet<usize> = old.iter().map(|mine| mine[0]).collect();
        let resize = Resize {
            world: 4,
            drop_remainder: true,
            positions: vec![1; 4],
        };
        let new: BTreeSet<usize> = (0..2)
            .flat_map(|r| assign(n, &id(), 3, 0, 2, r, false, std::slice::from_ref(&resize)))
            .collect();
        assert_eq!(new.len(), 6);
        assert!(new.is_disjoint(&yielded));
    }
}
