//! `baton.v1.ExecutionService`: read a rollout's state. Any authenticated caller; a tenant
//! sees only its own executions (others are NOT_FOUND, so ids cannot be probed).

use crate::Error;
use crate::store::Store;
use baton_proto::execution_service_server::{ExecutionService, ExecutionServiceServer};
use baton_proto::{GetExecutionRequest, GetExecutionResponse};
use baton_runtime::auth::Authenticator;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The gRPC handler.
struct Service {
    /// Verifies bearer tokens.
    auth: Arc<Authenticator>,
    /// Where executions are kept.
    store: Store,
}

/// The tonic server for `ExecutionService`.
pub(crate) fn server(
    auth: Arc<Authenticator>,
    store: Store,
) -> ExecutionServiceServer<impl ExecutionService> {
    ExecutionServiceServer::new(Service { auth, store })
}

#[tonic::async_trait]
impl ExecutionService for Service {
    async fn get_execution(
        &self,
        request: Request<GetExecutionRequest>,
    ) -> Result<Response<GetExecutionResponse>, Status> {
        let principal = self.auth.authenticate(&request).await?;
        let task_id = request.into_inner().task_id;
        match self.store.load(&task_id).await? {
            Some((execution, _)) if principal.can_see(&execution.tenant) => {
                Ok(Response::new(GetExecutionResponse {
                    execution: Some(execution),
                }))
            }
            _ => Err(Error::NotFound(task_id).into()),
        }
    }
}
