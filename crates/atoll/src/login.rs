//! `atoll login`: a kubectl credential plugin (exec, `client.authentication.k8s.io/v1`)
//! that trades a User's name and password for a short-lived token at the server's login
//! endpoint. kubectl 1.27–1.33 no longer send a kubeconfig's `username`/`password`, so
//! this is how a password-holding User works with stock kubectl:
//!
//! ```sh
//! atoll login --server https://HOST:6443 --certificate-authority ca.crt --user acme/ann \
//!     --print-kubeconfig > ann.kubeconfig     # once
//! KUBECONFIG=ann.kubeconfig kubectl get ns     # kubectl runs `atoll login` when it needs a token
//! ```
//!
//! The password comes from `--password-file`, else `ATOLL_PASSWORD`, else one line of
//! standard input (kubectl passes its terminal through); it is never written anywhere.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The API server's URL (a `/tenants/T` prefix is fine).
    #[arg(long)]
    pub server: String,
    /// The cluster CA's certificate (PEM), to verify the server.
    #[arg(long)]
    pub certificate_authority: PathBuf,
    /// `TENANT/NAME` of the User.
    #[arg(long)]
    pub user: String,
    /// Read the password from this file (its first line).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Print a kubeconfig that runs this command as its credential plugin, and exit.
    #[arg(long)]
    pub print_kubeconfig: bool,
}

fn password(args: &LoginArgs) -> Result<String> {
    if let Some(file) = &args.password_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        return Ok(text.lines().next().unwrap_or("").to_string());
    }
    if let Ok(p) = std::env::var("ATOLL_PASSWORD") {
        return Ok(p);
    }
    eprint!("Password for {}: ", args.user);
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub async fn run(args: LoginArgs) -> Result<()> {
    let Some((tenant, name)) = args.user.split_once('/') else {
        bail!("--user is TENANT/NAME");
    };
    let ca = std::fs::read_to_string(&args.certificate_authority)
        .with_context(|| format!("reading {}", args.certificate_authority.display()))?;
    if args.print_kubeconfig {
        let exe = std::env::current_exe().context("locating the atoll binary")?;
        let ca_path = std::fs::canonicalize(&args.certificate_authority)?;
        let mut plugin_args = vec![
            "login".to_string(),
            "--server".into(),
            args.server.clone(),
            "--certificate-authority".into(),
            ca_path.display().to_string(),
            "--user".into(),
            args.user.clone(),
        ];
        if let Some(file) = &args.password_file {
            plugin_args.push("--password-file".into());
            plugin_args.push(std::fs::canonicalize(file)?.display().to_string());
        }
        let exe = exe.display().to_string();
        print!("{}", apiserver::pki::exec_kubeconfig(&args.server, &ca, &exe, &plugin_args, name, tenant));
        return Ok(());
    }
    let config = client::Config {
        server: client::ServerUrl::parse(&args.server)?,
        ca_pem: ca.into_bytes(),
        identity: None,
        token: None,
        tls_server_name: None,
        namespace: None,
        user_agent: client::default_user_agent(),
    };
    let client = client::Client::new(config)?;
    let secret = password(&args)?;
    let credential = client.login(&args.user, &secret).await.context("logging in")?;
    println!("{credential}");
    Ok(())
}
