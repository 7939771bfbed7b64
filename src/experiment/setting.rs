//! The settings of the paper's tables: how a pretrained model is adapted before it answers.

use crate::adapter::RuleSet;
use crate::data::Task;
use std::fmt;

/// One column of the paper's tables: how a model is adapted before it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// The pretrained model as it is, in the chat format.
    Base,
    /// Finetuned on LIMA instruction-response pairs: every other setting is judged against it.
    Instruction,
    /// Finetuned on LIMA responses with empty instructions.
    Response,
    /// Finetuned on one narrow task (gsm, mbpp, poetry, recipes, chess).
    SingleTask(Task),
    /// The base model with the rule adapter (all three rules, or an ablation).
    Rules(RuleSet),
}

impl Setting {
    pub const SINGLE_TASKS: [Task; 5] = [
        Task::Gsm,
        Task::Mbpp,
        Task::Poetry,
        Task::Recipes,
        Task::Chess,
    ];

    /// The rule-adapter settings: all rules, then each one left out.
    pub fn rule_settings() -> [Setting; 4] {
        let all = RuleSet::all();
        [
            Setting::Rules(all),
            Setting::Rules(RuleSet { eos: false, ..all }),
            Setting::Rules(RuleSet {
                uniform: false,
                ..all
            }),
            Setting::Rules(RuleSet {
                diversity: false,
                ..all
            }),
        ]
    }

    pub fn parse(name: &str) -> Option<Setting> {
        Some(match name {
            "base" => Setting::Base,
            "instruction" => Setting::Instruction,
            "response" => Setting::Response,
            "rules" => Setting::rule_settings()[0],
            "rules-no-eos" => Setting::rule_settings()[1],
            "rules-no-uniform" => Setting::rule_settings()[2],
            "rules-no-diversity" => Setting::rule_settings()[3],
            other => {
                let task = Setting::SINGLE_TASKS
                    .into_iter()
                    .find(|t| t.name() == other)?;
                Setting::SingleTask(task)
            }
        })
    }

    /// The name used in configs, folders and tables' CSV.
    pub fn name(&self) -> String {
        match self {
            Setting::Base => "base".into(),
            Setting::Instruction => "instruction".into(),
            Setting::Response => "response".into(),
            Setting::SingleTask(t) => t.name().into(),
            Setting::Rules(r) => {
                let off: Vec<&str> = [
                    ("eos", r.eos),
                    ("uniform", r.uniform),
                    ("diversity", r.diversity),
                ]
                .iter()
                .filter(|(_, on)| !on)
                .map(|(n, _)| *n)
                .collect();
                match off.as_slice() {
                    [] => "rules".into(),
                    _ => format!("rules-no-{}", off.join("-no-")),
                }
            }
        }
    }

    /// How the paper's tables call it.
    pub fn label(&self) -> String {
        match self {
            Setting::Base => "Base model".into(),
            Setting::Instruction => "Instruction tuning".into(),
            Setting::Response => "Response tuning".into(),
            Setting::SingleTask(t) => match t {
                Task::Gsm => "GSM".into(),
                Task::Mbpp => "MBPP".into(),
                Task::Poetry => "Poetry".into(),
                Task::Recipes => "Recipes".into(),
                Task::Chess => "Chess".into(),
                other => other.name().into(),
            },
            Setting::Rules(r) if *r == RuleSet::all() => "Rules (all three)".into(),
            Setting::Rules(r) if !r.eos => "Rules − EOS".into(),
            Setting::Rules(r) if !r.uniform => "Rules − uniform token changes".into(),
            Setting::Rules(r) if !r.diversity => "Rules − diversity".into(),
            Setting::Rules(r) => format!("Rules ({})", r.names()),
        }
    }

    /// The training set this setting finetunes on, if it trains.
    pub fn training_task(&self) -> Option<Task> {
        match self {
            Setting::Instruction => Some(Task::Lima),
            Setting::Response => Some(Task::LimaResponse),
            Setting::SingleTask(t) => Some(*t),
            Setting::Base | Setting::Rules(_) => None,
        }
    }

    pub fn trains(&self) -> bool {
        self.training_task().is_some()
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}
