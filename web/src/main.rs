//! `ocs-web`: the web board. `ocs-web hash-password` reads a password on
//! standard input and prints its hash for the users file.

use std::io::BufRead;
use std::process::ExitCode;

use ocs_service::skeleton;
use ocs_web::Config;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("hash-password") {
        return hash_password();
    }
    skeleton::run(|config: Config, started| ocs_web::run(config, started))
}

/// Never from the command line: a password there shows in `ps`.
fn hash_password() -> ExitCode {
    let mut password = String::new();
    if std::io::stdin().lock().read_line(&mut password).is_err() {
        eprintln!("error: cannot read the password from standard input");
        return ExitCode::FAILURE;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!(
            "error: give the password on standard input, e.g. `ocs-web hash-password < file`"
        );
        return ExitCode::FAILURE;
    }
    println!("{}", ocs_web::users::hash_password(password));
    ExitCode::SUCCESS
}
