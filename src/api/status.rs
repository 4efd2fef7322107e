//! From a call's failure to a gRPC status with rich details: google.rpc.ErrorInfo always,
//! RetryInfo when rate-limited, BadRequest for a bad field, and the call's AttemptLog.

use bytes::Bytes;
use prost::Message;
use prost_types::Any;
use tonic::Status;
use tonic_types::pb;

use crate::proto::{Attempt, AttemptLog};
use crate::routing::{CallError, error::ERROR_DOMAIN, to_proto_duration};

pub const ATTEMPT_LOG_TYPE_URL: &str = "type.googleapis.com/llmrouter.v1.AttemptLog";

pub fn call_status(error: &CallError, attempts: &[Attempt]) -> Status {
    let code = error.code();
    let message = error.message();

    let mut metadata = std::collections::HashMap::new();
    metadata.insert("attempts".to_string(), attempts.len().to_string());
    if let Some(last) = attempts.last() {
        metadata.insert("last_model".to_string(), last.model.clone());
        metadata.insert("last_deployment".to_string(), last.deployment.clone());
    }
    match error {
        CallError::ModelNotFound { model, .. } => {
            metadata.insert("model".to_string(), model.clone());
        }
        CallError::InvalidArgument { field, .. } => {
            metadata.insert("field".to_string(), field.clone());
        }
        _ => {}
    }

    let mut details = vec![any(
        "type.googleapis.com/google.rpc.ErrorInfo",
        &pb::ErrorInfo {
            reason: error.reason().to_string(),
            domain: ERROR_DOMAIN.to_string(),
            metadata,
        },
    )];
    if let Some(delay) = error.retry_after() {
        details.push(any(
            "type.googleapis.com/google.rpc.RetryInfo",
            &pb::RetryInfo {
                retry_delay: Some(to_proto_duration(delay)),
            },
        ));
    }
    if let CallError::InvalidArgument { field, message } = error {
        details.push(any(
            "type.googleapis.com/google.rpc.BadRequest",
            &pb::BadRequest {
                field_violations: vec![pb::bad_request::FieldViolation {
                    field: field.clone(),
                    description: message.clone(),
                    ..Default::default()
                }],
            },
        ));
    }
    details.push(any(
        ATTEMPT_LOG_TYPE_URL,
        &AttemptLog {
            attempts: attempts.to_vec(),
        },
    ));

    let status = pb::Status {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, Bytes::from(status.encode_to_vec()))
}

fn any(type_url: &str, msg: &impl Message) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: msg.encode_to_vec(),
    }
}

/// Reads the AttemptLog back out of a status, for clients and tests.
pub fn attempt_log(status: &Status) -> Option<AttemptLog> {
    let decoded = pb::Status::decode(status.details()).ok()?;
    decoded
        .details
        .iter()
        .find(|a| a.type_url == ATTEMPT_LOG_TYPE_URL)
        .and_then(|a| AttemptLog::decode(a.value.as_slice()).ok())
}
