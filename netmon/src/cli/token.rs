//! `netmon token [--rotate]`: prints the API's bearer token (made when missing), or
//! replaces it with a new one. A running `netmon run` picks a new token up within a
//! second (it watches the file).
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::api::auth;

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Replace the token with a new random one (clients need the new one).
    #[arg(long)]
    pub rotate: bool,
    /// The token file (`netmon run --api-token-file`).
    #[arg(long, value_name = "FILE", default_value = auth::DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
}

pub fn run(args: TokenArgs) -> Result<ExitCode> {
    let token = if args.rotate {
        let t = auth::generate()?;
        auth::write(&args.token_file, &t, true)?;
        t
    } else {
        auth::load_or_create(&args.token_file)?
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
