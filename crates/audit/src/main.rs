//! `baton-audit [--config FILE]`: this service alone, as `baton serve audit` runs it.

fn main() -> std::process::ExitCode {
    baton_runtime::service::service_main::<baton_audit::Audit>()
}
