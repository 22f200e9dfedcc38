//! `quickp2p keygen`: make an Ed25519 key pair and write it to a key file.

use std::path::PathBuf;

use quickp2p::identity::Identity;

/// Flags of `quickp2p keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the key (refuses to overwrite). [default: quickp2p.key]
    #[arg(long, short, default_value = "quickp2p.key")]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<(), String> {
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    identity.save(&args.out).map_err(|e| e.to_string())?;
    println!("{}", identity.peer_id());
    eprintln!(
        "key written to {} (your peer id is above)",
        args.out.display()
    );
    Ok(())
}
