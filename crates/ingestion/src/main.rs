//! `baton-ingestion [--config FILE]`: this service alone, as `baton serve ingestion` runs it.

fn main() -> std::process::ExitCode {
    baton_runtime::service::service_main::<baton_ingestion::Ingestion>()
}
