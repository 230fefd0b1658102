//! `clo train`'s setting flags, built from clo-core's settings table
//! (`clo_core::train::config::SETTINGS`): one flag per setting (`--batch-size`, `--no-shuffle`
//! for a switch on by default), with the table's help and `RunConfig::default()`'s default. A
//! value is read by the same rules as the web form's fields ([`Setting::parse`]).

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use clo_core::train::config::{Kind, SETTINGS, Setting, setting_help_with_default};
use serde_json::Value;

/// The settings given on the command line, in the table's order.
#[derive(Debug, Clone, Default)]
pub struct SettingArgs(pub Vec<(&'static str, Value)>);

fn arg(s: &'static Setting) -> Arg {
    let arg = Arg::new(s.key).long(s.flag());
    match s.kind {
        Kind::Bool if s.on_by_default() => arg
            .action(ArgAction::SetTrue)
            .help(format!("Turn off: {}", s.help)),
        Kind::Bool => arg.action(ArgAction::SetTrue).help(s.help),
        Kind::List => arg
            .help(setting_help_with_default(s.key))
            .action(ArgAction::Append)
            .value_delimiter(',')
            .value_name("NAMES"),
        // `--layers 4,8` or `--layers 4 8`.
        Kind::Range => arg
            .help(setting_help_with_default(s.key))
            .action(ArgAction::Append)
            .value_delimiter(',')
            .num_args(1..=2)
            .value_name("FROM,TO"),
        kind => arg
            .help(setting_help_with_default(s.key))
            .value_name(match kind {
                Kind::Path => "PATH",
                Kind::Choice(_) => "NAME",
                Kind::Float => "X",
                _ => "N",
            })
            .value_parser(move |text: &str| {
                s.parse(text)
                    .map_err(|e| format!("{e} (run setting `{}`)", s.key))
            }),
    }
}

impl Args for SettingArgs {
    fn augment_args(mut cmd: Command) -> Command {
        for s in SETTINGS {
            cmd = cmd.arg(arg(s));
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for SettingArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Vec::new();
        for s in SETTINGS {
            let value = match s.kind {
                Kind::Bool => m.get_flag(s.key).then(|| Value::Bool(!s.on_by_default())),
                Kind::List | Kind::Range => m
                    .get_many::<String>(s.key)
                    .map(|parts| {
                        let text = parts.cloned().collect::<Vec<_>>().join(",");
                        s.parse(&text).map_err(|e| {
                            clap::Error::raw(
                                clap::error::ErrorKind::ValueValidation,
                                format!("--{}: {e} (run setting `{}`)\n", s.flag(), s.key),
                            )
                        })
                    })
                    .transpose()?,
                _ => m.get_one::<Value>(s.key).cloned(),
            };
            if let Some(value) = value {
                given.push((s.key, value));
            }
        }
        Ok(SettingArgs(given))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        settings: SettingArgs,
    }

    fn parse(args: &[&str]) -> Result<Vec<(&'static str, Value)>, String> {
        let mut argv = vec!["clo"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map(|c| c.settings.0)
            .map_err(|e| e.to_string())
    }

    /// Every setting has its flag, and each flag sets its setting by the table's rules.
    #[test]
    fn every_setting_is_a_flag() {
        let cmd = <Cli as clap::CommandFactory>::command();
        let longs: Vec<&str> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
        for s in SETTINGS {
            assert!(longs.contains(&s.flag().as_str()), "{}", s.key);
        }
        let given = parse(&[
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--layers",
            "4,8",
            "--lora-targets",
            "q_proj,v_proj",
            "--no-shuffle",
            "--grad-checkpoint",
            "--method",
            "sft+dpo",
            "--steps",
            "",
        ])
        .unwrap();
        assert_eq!(
            given,
            vec![
                ("method", Value::from("sft+dpo")),
                ("lr", serde_json::json!(1e-3)),
                ("steps", Value::Null),
                ("batch_size", Value::from(4)),
                ("layers", serde_json::json!([4, 8])),
                ("lora_targets", serde_json::json!(["q_proj", "v_proj"])),
                ("shuffle", Value::Bool(false)),
                ("grad_checkpoint", Value::Bool(true)),
            ]
        );
        assert!(parse(&[]).unwrap().is_empty());
        let err = parse(&["--epochs", "two"]).unwrap_err();
        assert!(
            err.contains("--epochs") && err.contains("whole number"),
            "{err}"
        );
        let err = parse(&["--method", "magic"]).unwrap_err();
        assert!(err.contains("choose one of clo"), "{err}");
    }
}
