//! `baton-validation [--config FILE]`: this service alone, as `baton serve validation` runs it.

fn main() -> std::process::ExitCode {
    baton_runtime::service::service_main::<baton_validation::Validation>()
}
