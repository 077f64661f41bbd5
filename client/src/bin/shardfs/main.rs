//! `shardfs`: the command line for shardfs clusters.
//!
//! - `args`: the grammar (clap) and each command's client configuration;
//! - `cmd/`: the handlers: `transfer` (put, get, cat), `namespace` (ls,
//!   stat, rm, mv, mkdir), `cluster` (status, drain, remove), `stream`,
//!   `mount` (mount, umount), `bench`, `docs` (completions, man pages);
//! - `output`: progress bars and how sizes, hashes and times are shown.
//!
//! Exit codes: 0 ok, 1 error (said in words on stderr), 2 usage, 130
//! interrupted.

mod args;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::Parser;
use shardfs_client::{Client, ClientError, Result};
use shardfs_proto::errln;
use shardfs_proto::security;

use args::{AdminCommand, Cli, ClusterCommand, Command, TokenCommand};

/// mimalloc, tuned by `shardfs_proto::alloc::keep_freed_memory`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    shardfs_proto::alloc::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDFS_LOG")
                // Warnings (a replica that failed and was read elsewhere)
                // only when asked: the error, if any, says what matters.
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("shardfs: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    // Commands that need no cluster.
    match &cli.command {
        Command::Umount { mountpoint, lazy } => return cmd::mount::umount(mountpoint, *lazy).await,
        Command::Completions { shell } => return cmd::docs::completions(*shell),
        Command::Man { dir } => return cmd::docs::man_pages(dir),
        Command::Mount(args) if !args.foreground => {
            return cmd::mount::mount_in_background(&cli, args);
        }
        Command::Cluster {
            command: ClusterCommand::InitCa { dir },
        } => return cmd::cluster::init_ca(dir),
        Command::Cluster {
            command:
                ClusterCommand::IssueCert {
                    ca_dir,
                    meta,
                    chunk,
                    host,
                    out,
                    json,
                },
        } => return cmd::cluster::issue_cert(ca_dir, *meta, *chunk, host, out.as_deref(), *json),
        Command::Admin {
            command:
                AdminCommand::Token {
                    command: TokenCommand::Bootstrap { out, name },
                },
        } => return cmd::admin::bootstrap(out, name),
        _ => {}
    }
    let mut config = cli.command.client_config()?;
    config.token = match (&cli.token, &cli.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(file)) => Some(shardfs_client::client::read_token_file(file)?),
        (None, None) => None,
    };
    config.security = Some(
        security::client(cli.ca.clone(), cli.insecure)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?,
    );
    // A bad local argument fails before anything is sent (or even dialled).
    let local_sources = match &cli.command {
        Command::Put(args) => cmd::transfer::plan_local(args, config.chunk_size)?,
        _ => Vec::new(),
    };
    let addrs: Vec<String> = cli.meta.split(',').map(str::to_string).collect();
    let client = Client::connect_with(&addrs, config).await?;
    match cli.command {
        Command::Put(args) => cmd::transfer::put(&client, args, local_sources).await,
        Command::Get {
            remote,
            local,
            recursive,
        } => cmd::transfer::get(&client, &remote, &local, recursive).await,
        Command::Cat { paths } => cmd::transfer::cat(&client, &paths).await,
        Command::Ls {
            path,
            long,
            recursive,
            json,
        } => cmd::namespace::ls(&client, &path, long, recursive, json).await,
        Command::Stat { path, json } => cmd::namespace::stat(&client, &path, json).await,
        Command::Rm { paths, recursive } => cmd::namespace::rm(&client, paths, recursive).await,
        Command::Mv { from, to } => cmd::namespace::mv(&client, &from, to).await,
        Command::Mkdir { paths, parents } => cmd::namespace::mkdir(&client, paths, parents).await,
        Command::Admin {
            command: AdminCommand::Token { command },
        } => match command {
            TokenCommand::Create {
                name,
                role,
                prefix,
                out,
            } => cmd::admin::create(&client, &name, &role, &prefix, out.as_deref()).await,
            TokenCommand::Revoke { name } => cmd::admin::revoke(&client, &name).await,
            TokenCommand::List { json } => cmd::admin::list(&client, json).await,
            TokenCommand::Bootstrap { .. } => unreachable!("handled before connecting"),
        },
        Command::Cluster { command } => match command {
            ClusterCommand::Status { json } => cmd::cluster::cluster_status(&client, json).await,
            ClusterCommand::Drain { id, cancel } => cmd::cluster::drain(&client, id, cancel).await,
            ClusterCommand::Remove { id } => cmd::cluster::remove(&client, id).await,
            ClusterCommand::InitCa { .. } | ClusterCommand::IssueCert { .. } => {
                unreachable!("handled before connecting")
            }
        },
        Command::Bench(args) => cmd::bench::bench(&client, args).await,
        Command::Stream(args) => cmd::stream::stream(&client, args).await,
        Command::Mount(args) => cmd::mount::mount_here(client, args).await,
        Command::Umount { .. } | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before connecting")
        }
    }
}
