//! CLI flag hints: the library names run settings as "the `key` setting" (the key of
//! `RUN/config.toml` and of the HTTP API's bodies, which is what the server shows); the binary
//! turns each into the flag that sets it (`--key-with-dashes`) when the command line has one.

use std::collections::BTreeSet;

/// Every long flag of `command` and its subcommands, without the dashes.
pub fn long_flags(command: &clap::Command) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = command
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    for sub in command.get_subcommands() {
        out.extend(long_flags(sub));
    }
    out
}

/// Rewrites "the `key` setting" into "`--key`" where `--key` (underscores as dashes) is one of
/// `flags`; other text is kept.
pub fn with_flags(message: &str, flags: &BTreeSet<String>) -> String {
    const OPEN: &str = "the `";
    const CLOSE: &str = "` setting";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        let key = &after[..end];
        let flag = key.replace('_', "-");
        let is_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        out.push_str(&rest[..start]);
        if is_key && flags.contains(&flag) {
            out.push_str(&format!("`--{flag}`"));
        } else {
            out.push_str(&rest[start..start + OPEN.len() + end + CLOSE.len()]);
        }
        rest = &after[end + CLOSE.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn settings_become_the_flags_that_set_them() {
        let flags = long_flags(&crate::Cli::command());
        assert!(flags.contains("val-fraction") && flags.contains("resume"));
        let lib = "no data left; add data or set the `val_fraction` setting to 0\nHINT: continue it with the `resume` setting, or the `no_such_key` setting, or the `Odd Key` setting";
        assert_eq!(
            with_flags(lib, &flags),
            "no data left; add data or set `--val-fraction` to 0\nHINT: continue it with `--resume`, or the `no_such_key` setting, or the `Odd Key` setting"
        );
        assert_eq!(with_flags("the `lr", &flags), "the `lr");
    }
}
