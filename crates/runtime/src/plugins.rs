//! The plug-in registry: how extensions reach the services without editing them.
//!
//! A service crate defines the type of its plug-ins (the agent runner an `AgentFactory`,
//! decision a `TierFactory`, execution a `RunnerFactory`, …) and, at start, takes every
//! registered value of that type from [`Context::plugins`](crate::Context::plugins). The
//! process that runs the services (`baton up`, `baton serve`, a service's own binary, a test)
//! builds one [`Plugins`] — the built-ins first, through each crate's own `register_builtins`,
//! then its extensions — and hands it to them through the [`Context`](crate::Context).
//!
//! The registry is a type map of lists in registration order, the same idea as
//! `http::Extensions` but holding many values per type: a later registration with the same
//! name wins where a service looks plug-ins up by name (so an extension can replace a
//! built-in), and nothing is global or static.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// Registered plug-ins, grouped by type. Cheap to share behind an `Arc` (see
/// [`Context`](crate::Context)); built before the services start and read-only afterwards.
#[derive(Default)]
pub struct Plugins {
    /// One `Vec<T>` (boxed as `Any`) per plug-in type `T`, in registration order.
    by_type: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    /// The type names, for `Debug` (what is registered, without requiring `T: Debug`).
    names: HashMap<TypeId, (&'static str, usize)>,
}

impl Plugins {
    /// An empty registry (no built-ins: a service then has only what it cannot do without).
    pub fn new() -> Plugins {
        Plugins::default()
    }

    /// Appends `plugin` to the list of its type.
    pub fn register<T: Any + Send + Sync>(&mut self, plugin: T) -> &mut Plugins {
        let id = TypeId::of::<T>();
        let list = self
            .by_type
            .entry(id)
            .or_insert_with(|| Box::new(Vec::<T>::new()));
        list.downcast_mut::<Vec<T>>()
            .expect("the list of a TypeId holds that type")
            .push(plugin);
        let entry = self
            .names
            .entry(id)
            .or_insert((std::any::type_name::<T>(), 0));
        entry.1 += 1;
        self
    }

    /// [`Plugins::register`] in builder style.
    pub fn with<T: Any + Send + Sync>(mut self, plugin: T) -> Plugins {
        self.register(plugin);
        self
    }

    /// Every registered plug-in of type `T`, in registration order (empty when none).
    pub fn all<T: Any + Send + Sync>(&self) -> &[T] {
        self.by_type
            .get(&TypeId::of::<T>())
            .and_then(|list| list.downcast_ref::<Vec<T>>())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Shares this registry (what [`Context`](crate::Context) holds).
    pub fn shared(self) -> Arc<Plugins> {
        Arc::new(self)
    }
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.names.values().collect();
        names.sort();
        f.debug_map()
            .entries(names.iter().map(|(n, c)| (n, c)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Tier(&'static str);
    #[derive(Debug, PartialEq)]
    struct Runner(u8);

    #[test]
    fn plugins_are_kept_per_type_in_order() {
        let p = Plugins::new()
            .with(Tier("rules"))
            .with(Runner(1))
            .with(Tier("classifier"));
        assert_eq!(p.all::<Tier>(), &[Tier("rules"), Tier("classifier")]);
        assert_eq!(p.all::<Runner>(), &[Runner(1)]);
        assert!(p.all::<String>().is_empty());
        let shown = format!("{p:?}");
        assert!(
            shown.contains("Tier") && shown.contains("Runner"),
            "{shown}"
        );
    }
}
