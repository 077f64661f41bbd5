//! `shardfs completions SHELL` and `shardfs man DIR`: the command line's
//! own documentation, generated from its grammar.

use std::path::Path;

use clap::CommandFactory;
use shardfs_client::{ClientError, Result};
use shardfs_proto::outln;

use crate::args::Cli;

/// `shardfs completions SHELL`: the completion script on standard output.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "shardfs", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
        .unwrap_or_else(|e| shardfs_proto::output::stdout_failed(e));
    Ok(())
}

/// `shardfs man DIR`: shardfs.1 and one page per command (shardfs-put.1...).
pub fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ClientError::local(dir, e))?;
    let command = Cli::command();
    let mut written = Vec::new();
    let mut pages = vec![("shardfs".to_string(), command.clone())];
    for sub in command.get_subcommands() {
        let name = format!("shardfs-{}", sub.get_name());
        for nested in sub.get_subcommands() {
            pages.push((
                format!("{name}-{}", nested.get_name()),
                nested.clone().name(format!("{name}-{}", nested.get_name())),
            ));
        }
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut text)
            .map_err(|e| ClientError::local(&path, e))?;
        std::fs::write(&path, text).map_err(|e| ClientError::local(&path, e))?;
        written.push(path);
    }
    outln!("wrote {} man page(s) to {}", written.len(), dir.display());
    Ok(())
}
