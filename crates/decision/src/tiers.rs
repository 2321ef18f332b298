//! How classification tiers are registered: [`TierFactory`] is decision's plug-in type.
//!
//! The rules tier is a factory like any other (`rules`, [`builtin_factories`]). A program that
//! embeds Baton adds a tier (an embedding classifier, a model) by registering a factory in the
//! process's plug-in registry (`baton_runtime::plugins::Plugins`); `decision.tiers` orders them
//! by name, and when it is empty the order is `rules`, then every plug-in tier in registration
//! order. No service code changes to add a tier.

use crate::rules::RuleSet;
use crate::{Classifier, Config, Decider, Error, RulesClassifier};
use baton_llm::ProviderRegistry;
use baton_runtime::Context;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a factory may read while building its tier.
pub struct TierSetup<'a> {
    /// The `[decision]` section.
    pub config: &'a Config,
    /// The process's shared handles (bus, catalog, metrics, plug-ins).
    pub ctx: &'a Context,
    /// The loaded rules (for their `min_confidence`, roles and examples).
    pub rules: &'a Arc<RuleSet>,
}

/// The build function of a [`TierFactory`].
pub type BuildTier =
    dyn Fn(&TierSetup<'_>) -> Result<Arc<dyn Classifier>, Error> + Send + Sync + 'static;

/// A named way to build one classification tier. Register one with `Plugins::register` to add
/// a tier without editing the decision service.
#[derive(Clone)]
pub struct TierFactory {
    /// The name `decision.tiers` refers to (`rules`, `embedding`, `llm`).
    pub name: String,
    /// Builds the tier once, at start.
    pub build: Arc<BuildTier>,
}

impl TierFactory {
    /// A factory named `name`.
    pub fn new(
        name: &str,
        build: impl Fn(&TierSetup<'_>) -> Result<Arc<dyn Classifier>, Error> + Send + Sync + 'static,
    ) -> TierFactory {
        TierFactory {
            name: name.to_string(),
            build: Arc::new(build),
        }
    }
}

impl std::fmt::Debug for TierFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierFactory")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Name of the built-in rules tier.
pub const RULES_TIER: &str = "rules";

/// Name of the built-in embedding tier ([`crate::embedding`]).
pub const EMBEDDING_TIER: &str = "embedding";

/// Name of the built-in model tier ([`crate::llm`]).
pub const LLM_TIER: &str = crate::llm::TIER;

/// The model tier over the providers of the process's [`ProviderRegistry`] plug-in (`baton up`
/// registers one built from `[llm]`).
fn llm_tier(setup: &TierSetup<'_>) -> Result<Arc<dyn Classifier>, Error> {
    let empty = ProviderRegistry::default();
    let registry = setup
        .ctx
        .plugins
        .all::<ProviderRegistry>()
        .last()
        .unwrap_or(&empty);
    let tier = crate::llm::LlmClassifier::from_registry(
        registry,
        &setup.config.llm,
        setup.ctx.catalog.roles.clone(),
        setup.rules.clone(),
    )?;
    tracing::info!(providers = ?setup.config.llm.providers, "model tier ready");
    Ok(Arc::new(tier))
}

/// The tiers that ship with Baton: the rules file, (feature `embedding`) the embedding
/// classifier, and the model tier. The embedding tier joins the default order only when
/// `decision.embedding.model_dir` is set, the model tier only when `decision.llm.providers`
/// names a provider.
pub fn builtin_factories() -> Vec<TierFactory> {
    #[allow(unused_mut)]
    let mut factories = vec![TierFactory::new(RULES_TIER, |setup| {
        Ok(Arc::new(RulesClassifier(setup.rules.clone())) as Arc<dyn Classifier>)
    })];
    #[cfg(feature = "embedding")]
    factories.push(TierFactory::new(EMBEDDING_TIER, |setup| {
        let tier = crate::embedding::EmbeddingClassifier::load(
            &setup.config.embedding,
            &setup.ctx.catalog,
            setup.rules.clone(),
        )?;
        let cache = tier.cache_report();
        tracing::info!(
            examples = tier.example_count(),
            model_dir = ?setup.config.embedding.model_dir,
            cache_file = ?cache.map(|c| &c.path),
            cache_hits = cache.map_or(0, |c| c.hits),
            cache_misses = cache.map_or(0, |c| c.misses),
            "embedding classifier ready"
        );
        Ok(Arc::new(tier) as Arc<dyn Classifier>)
    }));
    factories.push(TierFactory::new(LLM_TIER, llm_tier));
    factories
}

/// The classification chain for `config`: built-in factories, then `ctx.plugins`' (a later
/// one with the same name replaces an earlier), in `decision.tiers` order or, when that is
/// empty, `rules` first and the plug-ins after it in registration order.
///
/// Errors: [`Error::Config`] naming an unknown tier and the registered ones, or a tier listed
/// twice; whatever a factory returns.
pub fn assemble(ctx: &Context, config: &Config, rules: Arc<RuleSet>) -> Result<Decider, Error> {
    let mut order: Vec<String> = Vec::new();
    let mut factories: BTreeMap<String, TierFactory> = BTreeMap::new();
    for f in builtin_factories()
        .into_iter()
        .chain(ctx.plugins.all::<TierFactory>().iter().cloned())
    {
        if !order.contains(&f.name) {
            order.push(f.name.clone());
        }
        factories.insert(f.name.clone(), f);
    }
    if !config.tiers.is_empty() {
        order = config.tiers.clone();
    } else if cfg!(feature = "embedding") && config.embedding.model_dir.is_none() {
        // No weights configured: route by rules (and plug-ins) only, and say so once.
        order.retain(|n| n != EMBEDDING_TIER);
        tracing::warn!(
            "decision routes by rules only: no embedding model configured; run `{}` and set decision.embedding.model_dir to the directory it prints",
            crate::embedding::FETCH_COMMAND
        );
    }
    if config.tiers.is_empty() && config.llm.providers.is_empty() {
        order.retain(|n| n != LLM_TIER);
    } else if config.tiers.is_empty() {
        // The model tier is asked last among the built-ins, after the classifier and before any
        // plug-in registered after it.
        if let Some(i) = order.iter().position(|n| n == LLM_TIER) {
            let tier = order.remove(i);
            let after = order
                .iter()
                .rposition(|n| n == RULES_TIER || n == EMBEDDING_TIER)
                .map_or(0, |p| p + 1);
            order.insert(after, tier);
        }
    }
    let setup = TierSetup {
        config,
        ctx,
        rules: &rules,
    };
    let mut tiers = Vec::with_capacity(order.len());
    for (i, name) in order.iter().enumerate() {
        if order[..i].contains(name) {
            return Err(Error::Config(format!(
                "decision.tiers lists {name:?} twice: name each tier once"
            )));
        }
        let factory = factories.get(name).ok_or_else(|| {
            Error::Config(format!(
                "decision.tiers names {name:?}, which is not registered; registered tiers: {}",
                factories.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        tiers.push((factory.build)(&setup)?);
    }
    Ok(Decider::with_tiers(rules, tiers)
        .when_unsure(config.when_unsure)
        .overrule_rules(config.overrule_rules))
}

/// A classification chain built without a running service (no bus, no plug-ins), for tools
/// that classify in process (`baton eval-routing`, `baton shadow`): the rules from
/// `config.rules_path`, then the built-in tiers named in `names` (`rules`, `embedding` or its
/// alias `classifier`), in that order, ending with `config.when_unsure`.
///
/// Errors: [`Error::Config`] for a name that is not a built-in tier (or the embedding tier in
/// a build without the `embedding` feature), and whatever loading the rules or a tier returns.
pub fn offline(
    config: &Config,
    catalog: &baton_runtime::catalog::Catalog,
    names: &[String],
) -> Result<Decider, Error> {
    offline_with_models(config, catalog, names, None)
}

/// [`offline`], where `names` may also list `llm` (the model tier over `config.llm.providers`
/// from `models`, built from `[llm]` by the caller).
///
/// Errors: as [`offline`]; [`Error::Config`] when `llm` is named without `models` or with
/// providers `models` does not have.
pub fn offline_with_models(
    config: &Config,
    catalog: &baton_runtime::catalog::Catalog,
    names: &[String],
    models: Option<&ProviderRegistry>,
) -> Result<Decider, Error> {
    let rules = Arc::new(RuleSet::load(config.rules_path.as_deref(), catalog)?);
    let mut tiers: Vec<Arc<dyn Classifier>> = Vec::new();
    for name in names {
        match name.as_str() {
            RULES_TIER => tiers.push(Arc::new(RulesClassifier(rules.clone()))),
            #[cfg(feature = "embedding")]
            EMBEDDING_TIER | "classifier" => {
                tiers.push(Arc::new(crate::embedding::EmbeddingClassifier::load(
                    &config.embedding,
                    catalog,
                    rules.clone(),
                )?))
            }
            LLM_TIER => {
                let models = models.ok_or_else(|| {
                    Error::Config("the llm tier needs [llm] providers: configure them and name them in decision.llm.providers".into())
                })?;
                tiers.push(Arc::new(crate::llm::LlmClassifier::from_registry(
                    models,
                    &config.llm,
                    catalog.roles.clone(),
                    rules.clone(),
                )?))
            }
            other => {
                return Err(Error::Config(format!(
                    "tier {other:?} cannot run here: use rules, embedding (classifier) or llm"
                )));
            }
        }
    }
    Ok(Decider::with_tiers(rules, tiers)
        .when_unsure(config.when_unsure)
        .overrule_rules(config.overrule_rules))
}
