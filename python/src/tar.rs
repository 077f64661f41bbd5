//! The members of a tar archive (ustar, with pax and GNU long names), as
//! slices of the shard's verified bytes: WebDataset shards are parsed here
//! rather than by Python's `tarfile`, and each member's bytes are copied
//! once, into the Python bytes object the sample holds.

use bytes::Bytes;

const BLOCK: usize = 512;

/// Regular files, in archive order: (name, bytes).
pub fn members(data: &Bytes) -> Result<Vec<(String, Bytes)>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut long_name: Option<String> = None;
    let mut pax_size: Option<usize> = None;
    while pos + BLOCK <= data.len() {
        let header = &data[pos..pos + BLOCK];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        check_sum(header).map_err(|why| format!("the header at byte {pos} {why}"))?;
        let size = match pax_size.take() {
            Some(size) => size,
            None => number(&header[124..136])
                .ok_or_else(|| format!("the header at byte {pos} has no valid size"))?,
        };
        let body_start = pos + BLOCK;
        let body_end = body_start
            .checked_add(size)
            .filter(|end| *end <= data.len())
            .ok_or_else(|| format!("the member at byte {pos} runs past the end of the shard"))?;
        let body = data.slice(body_start..body_end);
        match header[156] {
            b'0' | 0 | b'7' => {
                let name = match long_name.take() {
                    Some(name) => name,
                    None => header_name(header),
                };
                out.push((name, body));
            }
            b'x' => {
                for (key, value) in pax_records(&body) {
                    match key.as_str() {
                        "path" => long_name = Some(value),
                        "size" => pax_size = value.parse().ok(),
                        _ => {}
                    }
                }
            }
            b'L' => long_name = Some(c_string(&body)),
            _ => long_name = None,
        }
        pos = body_start + size.div_ceil(BLOCK) * BLOCK;
    }
    Ok(out)
}

fn check_sum(header: &[u8]) -> Result<(), &'static str> {
    let stored = number(&header[148..156]).ok_or("has no valid checksum")?;
    let sum: usize = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                b' ' as usize
            } else {
                *b as usize
            }
        })
        .sum();
    if sum != stored {
        return Err("has a wrong checksum (not a tar file, or a damaged one)");
    }
    Ok(())
}

/// An octal field (NUL or space terminated), or GNU's base-256 form.
fn number(field: &[u8]) -> Option<usize> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut value = 0usize;
        for (i, b) in field.iter().enumerate() {
            let b = if i == 0 { b & 0x7f } else { *b };
            value = value.checked_mul(256)?.checked_add(b as usize)?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    usize::from_str_radix(digits, 8).ok()
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `prefix/name` of a ustar header (just `name` in older formats).
fn header_name(header: &[u8]) -> String {
    let name = c_string(&header[0..100]);
    if &header[257..262] == b"ustar" {
        let prefix = c_string(&header[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// The records of a pax extended header: "LEN key=value\n" each.
fn pax_records(body: &[u8]) -> Vec<(String, String)> {
    let mut records = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|b| *b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|b| *b == b'=') {
            records.push((
                String::from_utf8_lossy(&record[..eq]).into_owned(),
                String::from_utf8_lossy(&record[eq + 1..]).into_owned(),
            ));
        }
        rest = &rest[len..];
    }
    records
}
