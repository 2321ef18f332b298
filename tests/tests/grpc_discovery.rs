//! What `grpcurl` relies on: server reflection lists every service and describes every method,
//! and the standard health service answers for each Baton service, all without a token.
//! (grpcurl itself cannot be installed here; these are the same RPCs it makes.)

use baton_tests::{Db, Harness};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// Every RPC of proto/baton/v1/services.proto, by service.
fn expected() -> BTreeMap<&'static str, Vec<&'static str>> {
    BTreeMap::from([
        ("baton.v1.TriggerService", vec!["SubmitTask"]),
        (
            "baton.v1.DecisionService",
            vec![
                "Classify",
                "ListAwaiting",
                "Route",
                "RejectTask",
                "ListRoles",
            ],
        ),
        (
            "baton.v1.ApprovalService",
            vec!["ListPending", "Approve", "Reject"],
        ),
        ("baton.v1.ExecutionService", vec!["GetExecution"]),
        ("baton.v1.AgentService", vec!["ListAgents", "ListTools"]),
        (
            "baton.v1.TaskService",
            vec![
                "GetTask",
                "ListTasks",
                "WatchTask",
                "WatchProgress",
                "VerifyAudit",
            ],
        ),
    ])
}

/// One reflection request, answered on its own stream.
async fn reflect(channel: tonic::transport::Channel, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection answers without a token")
        .into_inner();
    let ServerReflectionResponse {
        message_response, ..
    } = answers
        .message()
        .await
        .expect("reflection stream")
        .expect("one answer");
    match message_response.expect("a response body") {
        MessageResponse::ErrorResponse(e) => {
            panic!("reflection error {}: {}", e.error_code, e.error_message)
        }
        other => other,
    }
}

#[tokio::test]
async fn reflection_lists_and_describes_every_service_and_health_reports_serving() {
    let h = Harness::start(Db::Sqlite).await;
    let channel = tonic::transport::Endpoint::from_shared(h.baton.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // `grpcurl -plaintext host:port list`
    let MessageResponse::ListServicesResponse(list) =
        reflect(channel.clone(), MessageRequest::ListServices(String::new())).await
    else {
        panic!("list_services answered with something else");
    };
    let listed: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    let mut wanted: BTreeSet<String> = expected().keys().map(|s| s.to_string()).collect();
    wanted.insert("grpc.health.v1.Health".into());
    wanted.insert("grpc.reflection.v1.ServerReflection".into());
    assert!(
        wanted.is_subset(&listed),
        "reflection lists {listed:?}; missing {:?}",
        wanted.difference(&listed).collect::<Vec<_>>()
    );

    // `grpcurl -plaintext host:port describe <service>`: the descriptor of the file holding each
    // service names all of its methods, with their request and response types.
    for (service, methods) in expected() {
        let MessageResponse::FileDescriptorResponse(files) = reflect(
            channel.clone(),
            MessageRequest::FileContainingSymbol(service.into()),
        )
        .await
        else {
            panic!("file_containing_symbol({service}) answered with something else");
        };
        let (package, name) = service.rsplit_once('.').unwrap();
        let described = files
            .file_descriptor_proto
            .iter()
            .map(|bytes| {
                prost_types::FileDescriptorProto::decode(bytes.as_slice())
                    .expect("a FileDescriptorProto")
            })
            .filter(|f| f.package() == package)
            .flat_map(|f| f.service)
            .find(|s| s.name() == name)
            .unwrap_or_else(|| panic!("no descriptor describes {service}"));
        let got: Vec<&str> = described.method.iter().map(|m| m.name()).collect();
        assert_eq!(got, methods, "{service} methods");
        for m in &described.method {
            assert!(
                m.input_type().starts_with(".baton.v1.")
                    && m.output_type().starts_with(".baton.v1."),
                "{service}.{}: {m:?}",
                m.name()
            );
        }

        // `grpcurl -plaintext -d '{"service":"<service>"}' host:port grpc.health.v1.Health/Check`
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service}: {e}"))
            .into_inner()
            .status();
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service}"
        );
    }

    // A service this server does not have is not reported as serving.
    let err = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "baton.v1.NoSuchService".into(),
        })
        .await
        .expect_err("an unknown service has no health");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
}
