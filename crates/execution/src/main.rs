//! `baton-execution [--config FILE]`: this service alone, as `baton serve execution` runs it.

fn main() -> std::process::ExitCode {
    baton_runtime::service::service_main::<baton_execution::Executor>()
}
