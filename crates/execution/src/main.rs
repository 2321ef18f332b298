//! `baton-execution [--config FILE]`: this service alone, as `baton serve execution` runs it.

#[global_allocator]
static ALLOC: baton_runtime::Allocator = baton_runtime::Allocator;

fn main() -> std::process::ExitCode {
    baton_runtime::service::service_main::<baton_execution::Executor>()
}
