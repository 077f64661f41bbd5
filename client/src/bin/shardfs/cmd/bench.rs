//! `shardfs bench`: write then read files against the running cluster.

use shardfs_client::bench::{BenchOptions, run_bench};
use shardfs_client::{Client, Result};
use shardfs_proto::outln;

use crate::args::BenchArgs;
use crate::output::{finish, progress_bar};

pub async fn bench(client: &Client, args: BenchArgs) -> Result<()> {
    let options = BenchOptions {
        files: args.files,
        file_bytes: args.size_mib << 20,
        streams: args.streams,
        replication: args.replication,
        chunk_size: args.chunk_size,
        read_rounds: args.read_rounds,
        dir: args.dir,
        keep: args.keep,
        compare_grpc: args.compare_grpc,
    };
    let rounds = 1 + options.read_rounds as u64 * (1 + u64::from(options.compare_grpc));
    let total = options.files as u64 * options.file_bytes * rounds;
    let (bar, progress) = progress_bar(total, "bench");
    // Phase lines only when no bar shows them.
    let chatty = !args.json && bar.is_none();
    let report = run_bench(client, &options, chatty, progress).await;
    finish(bar);
    let report = report?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    } else {
        outln!("{}", report.summary());
    }
    Ok(())
}
