//! `baton-decision [--config FILE]`: this service alone, as `baton serve decision` runs it.

fn main() -> std::process::ExitCode {
    baton_runtime::service::service_main::<baton_decision::Router>()
}
