//! The routing commands: `baton eval-routing` (accuracy, per-tier figures, confusion matrix and
//! classify latency of the decision chain over a labelled file, in process) and `baton
//! classify` (the decision service's dry run over gRPC, with every tier's candidate), and the
//! operator's side of tasks no tier was confident about: `baton route` (route or reject) and
//! the `awaiting_clarification` lines of `baton pending`.

use crate::client::Clients;
use crate::config::BatonConfig;
use anyhow::Context as _;
use baton_decision::embedding::parse_examples;
use baton_decision::{eval, tiers};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// `baton eval-routing FILE.jsonl`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Labelled requests, JSON lines `{"text": …, "role": …}` (e.g. routing/heldout.jsonl).
    pub file: PathBuf,
    /// Tiers to run, in order (rules, classifier, llm); a request none is confident about
    /// waits for a human and counts as wrong. `llm` asks the `[llm]` providers named in
    /// `[decision.llm] providers`.
    #[arg(long, value_delimiter = ',', default_values = ["rules", "classifier"])]
    pub tiers: Vec<String>,
    /// Exit non-zero when the accuracy (0–1) is below this.
    #[arg(long)]
    pub min_accuracy: Option<f64>,
    /// The embedding model's directory (decision.embedding.model_dir; what
    /// `deploy/minilm.sh --env` prints).
    #[arg(long, env = "BATON_MINILM_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Also print one forward pass's cost at 16 and 64 tokens.
    #[arg(long)]
    pub bench: bool,
    /// Instead of running the chain, cross-validate the embedding tier on FILE as its examples:
    /// each line is scored by a classifier built from the other folds (line i in fold i % K).
    #[arg(long, value_name = "K")]
    pub cross_validate: Option<usize>,
}

/// Runs `baton eval-routing`.
pub async fn eval_routing(config: &BatonConfig, args: EvalArgs) -> anyhow::Result<ExitCode> {
    let mut decision = config.decision.clone();
    if decision.embedding.model_dir.is_none() {
        decision.embedding.model_dir = args.model_dir.clone();
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let examples = parse_examples(
        &text,
        &args.file.display().to_string(),
        &config.common.catalog,
    )?;
    let started = std::time::Instant::now();
    if let Some(folds) = args.cross_validate {
        decision.embedding.examples_path = Some(args.file.clone());
        let rules = std::sync::Arc::new(baton_decision::rules::RuleSet::load(
            decision.rules_path.as_deref(),
            &config.common.catalog,
        )?);
        let classifier = baton_decision::embedding::EmbeddingClassifier::load(
            &decision.embedding,
            &config.common.catalog,
            rules,
        )?;
        println!(
            "{folds}-fold cross-validation of the embedding tier ({:?} scoring, loaded in {:.1} s); {} examples from {}",
            decision.embedding.scoring,
            started.elapsed().as_secs_f64(),
            examples.len(),
            args.file.display()
        );
        let report = eval::cross_validate(&classifier, folds)?;
        print!("{report}");
        return Ok(check_min_accuracy(&report, args.min_accuracy));
    }
    let models = if args.tiers.iter().any(|t| t == tiers::LLM_TIER) {
        Some(config.llm.registry(|var| std::env::var(var).ok())?)
    } else {
        None
    };
    let decider = tiers::offline_with_models(
        &decision,
        &config.common.catalog,
        &args.tiers,
        models.as_ref(),
    )?;
    println!(
        "tiers {} (loaded in {:.1} s); {} requests from {}",
        decider.tier_names().join(" → "),
        started.elapsed().as_secs_f64(),
        examples.len(),
        args.file.display()
    );
    // One warm-up classification, so the first request does not pay for lazy set-up.
    if let Some(first) = examples.first() {
        eval::evaluate(&decider, std::slice::from_ref(first)).await?;
    }
    let report = eval::evaluate(&decider, &examples).await?;
    print!("{report}");
    if args.bench {
        bench(&decision)?;
    }
    Ok(check_min_accuracy(&report, args.min_accuracy))
}

/// Failure when `report`'s accuracy is below `min` (and says so).
fn check_min_accuracy(report: &eval::Report, min: Option<f64>) -> ExitCode {
    if let Some(min) = min
        && report.accuracy() < min
    {
        eprintln!(
            "accuracy {:.3} is below --min-accuracy {min}",
            report.accuracy()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Times forward passes of 16 and 64 tokens.
fn bench(decision: &baton_decision::Config) -> anyhow::Result<()> {
    let Some(dir) = &decision.embedding.model_dir else {
        anyhow::bail!("--bench needs the model: set --model-dir or BATON_MINILM_DIR");
    };
    let encoder = baton_decision::embedding::Encoder::load_with(dir, decision.embedding.precision)?;
    println!(
        "\none forward pass at {} (mean of 50, after 5 warm-up):",
        encoder.precision().as_str()
    );
    for n in [16usize, 64] {
        // [CLS] w w … [SEP]: ids of an ordinary word piece, all attended.
        let mut ids = vec![101u32];
        ids.extend(std::iter::repeat_n(2000u32, n - 2));
        ids.push(102);
        let mask = vec![1u32; n];
        for _ in 0..5 {
            encoder.forward(&ids, &mask)?;
        }
        let t = std::time::Instant::now();
        for _ in 0..50 {
            encoder.forward(&ids, &mask)?;
        }
        println!(
            "  {n:>3} tokens: {:.2} ms",
            t.elapsed().as_secs_f64() * 1e3 / 50.0
        );
    }
    Ok(())
}

/// `baton classify "text"`.
#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// The request, in words.
    pub text: String,
    /// development, staging or production.
    #[arg(long, short)]
    pub env: Option<String>,
}

/// Prints a decision: role, tier, confidence, rule or model, explanation.
fn print_decision(prefix: &str, d: &baton_proto::Decision) {
    let role = d.spec.as_ref().map(|s| s.role.as_str()).unwrap_or("");
    println!(
        "{prefix}{role} (tier {}, confidence {:.2}, by {})\n{prefix}  {}",
        eval::tier_label(d),
        d.confidence,
        d.matched_by,
        d.explanation
    );
}

/// Runs `baton classify`: `DecisionService/Classify`, the decision and every tier's
/// candidate, nothing published.
pub async fn classify(mut c: Clients, args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    let r = c
        .decisions
        .classify(baton_proto::ClassifyRequest {
            trigger: Some(baton_proto::Trigger {
                text: args.text,
                environment: args.env.unwrap_or_default(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let d = r.decision.unwrap_or_default();
    if d.matched_by == baton_decision::AWAITING_CLARIFICATION {
        println!("would wait for an operator: {}", d.explanation);
    } else {
        print_decision("", &d);
    }
    if !r.candidates.is_empty() {
        println!("tiers asked:");
        for cand in &r.candidates {
            print_decision("  ", cand);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the tasks waiting for an operator to choose their role (part of `baton pending`).
pub async fn print_awaiting(c: &mut Clients) -> anyhow::Result<()> {
    let r = c
        .decisions
        .list_awaiting(baton_proto::ListAwaitingRequest {})
        .await?
        .into_inner();
    for w in r.awaiting {
        let task = w.task.unwrap_or_default();
        let text = task.trigger.map(|t| t.text).unwrap_or_default();
        let guess = w
            .decision
            .and_then(|d| d.spec.map(|s| format!("{} {:.2}", s.role, d.confidence)))
            .unwrap_or_default();
        println!(
            "{}  awaiting_clarification  {text:?}  best guess {guess}  (baton route {} --role <role>)",
            task.task_id, task.task_id
        );
    }
    Ok(())
}

/// `baton route <task-id> --role <role>` or `--reject --reason …`.
#[derive(Args, Debug)]
pub struct RouteArgs {
    /// Task id of a task awaiting clarification (`baton pending`).
    pub id: String,
    /// The role to route it to.
    #[arg(long, required_unless_present = "reject", conflicts_with = "reject")]
    pub role: Option<String>,
    /// Reject the task instead of routing it (needs --reason).
    #[arg(long, requires = "reason")]
    pub reject: bool,
    /// Why, kept in the audit log (required with --reject).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// Runs `baton route` (operator role).
pub async fn route(mut c: Clients, args: RouteArgs) -> anyhow::Result<ExitCode> {
    if args.reject {
        let r = c
            .decisions
            .reject_task(baton_proto::RejectTaskRequest {
                task_id: args.id.clone(),
                reason: args.reason,
            })
            .await?
            .into_inner();
        let a = r.approval.unwrap_or_default();
        println!("{} rejected by {}: {}", args.id, a.approver, a.reason);
        return Ok(ExitCode::SUCCESS);
    }
    let r = c
        .decisions
        .route(baton_proto::RouteRequest {
            task_id: args.id.clone(),
            role: args.role.unwrap_or_default(),
            reason: args.reason,
        })
        .await?
        .into_inner();
    print_decision(&format!("{} → ", args.id), &r.decision.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// `baton shadow --rules FILE --examples FILE [--since 24h]`.
#[derive(Args, Debug)]
pub struct ShadowArgs {
    /// Candidate rules file (default: the configured one).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Candidate labelled examples (default: the configured ones).
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// How far back to replay (`24h`, `30m`, `7d`).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub since: std::time::Duration,
    /// Candidate tiers, in order (rules, classifier).
    #[arg(long, value_delimiter = ',', default_values = ["rules", "classifier"])]
    pub tiers: Vec<String>,
    /// The embedding model's directory (decision.embedding.model_dir).
    #[arg(long, env = "BATON_MINILM_DIR")]
    pub model_dir: Option<PathBuf>,
}

/// The decisions the audit log recorded for tasks created within `since`, oldest first (read
/// through `TaskService`, the caller's tenant unless it is an admin).
pub async fn recorded_decisions(
    c: &mut Clients,
    since: std::time::Duration,
) -> anyhow::Result<Vec<baton_decision::shadow::Recorded>> {
    let cutoff = std::time::SystemTime::now()
        .checked_sub(since)
        .unwrap_or(std::time::UNIX_EPOCH)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let mut out = Vec::new();
    let mut page_token = String::new();
    'pages: loop {
        let r = c
            .tasks
            .list_tasks(baton_proto::ListTasksRequest {
                page_size: 200,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        for t in r.tasks {
            if t.created_at.map(|c| c.seconds).unwrap_or_default() < cutoff {
                break 'pages;
            }
            let events = c
                .tasks
                .get_task(baton_proto::GetTaskRequest {
                    task_id: t.task_id.clone(),
                })
                .await?
                .into_inner()
                .events;
            // The last decision recorded: an operator's route supersedes the wait.
            if let Some(rec) = events
                .iter()
                .rev()
                .filter_map(|e| e.event.as_ref())
                .find_map(baton_decision::shadow::Recorded::from_event)
            {
                out.push(rec);
            }
        }
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    out.reverse();
    Ok(out)
}

/// Runs `baton shadow`: replays the recorded decisions through the candidate chain and lists
/// the tasks whose role would change. Routes nothing.
pub async fn shadow(
    config: &BatonConfig,
    mut c: Clients,
    args: ShadowArgs,
) -> anyhow::Result<ExitCode> {
    let mut decision = config.decision.clone();
    if let Some(rules) = args.rules {
        decision.rules_path = Some(rules);
    }
    if let Some(examples) = args.examples {
        decision.embedding.examples_path = Some(examples);
    }
    if decision.embedding.model_dir.is_none() {
        decision.embedding.model_dir = args.model_dir;
    }
    let candidate = tiers::offline(&decision, &config.common.catalog, &args.tiers)?;
    let recorded = recorded_decisions(&mut c, args.since).await?;
    let changes = baton_decision::shadow::replay(&candidate, &recorded).await?;
    println!(
        "replayed {} decisions of the last {} through {}: {} would change",
        recorded.len(),
        humantime::format_duration(args.since),
        candidate.tier_names().join(" → "),
        changes.len()
    );
    for ch in &changes {
        println!(
            "{}  {:?}  {} → {}",
            ch.task_id, ch.text, ch.old_role, ch.new_role
        );
        println!(
            "    was: {} {:.2}: {}",
            eval::tier_label(&ch.old),
            ch.old.confidence,
            ch.old.explanation
        );
        println!(
            "    now: {} {:.2}: {}",
            eval::tier_label(&ch.new),
            ch.new.confidence,
            ch.new.explanation
        );
    }
    Ok(ExitCode::SUCCESS)
}
