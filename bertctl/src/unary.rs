//! Commands of one call each: `tokenize`, `info`, `health`; and the model's width for a job.
use bertd_proto::bert::v1 as pb;
use pb::model_client::ModelClient;
use pb::tokenizer_client::TokenizerClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::connect::{Connector, MAX_RESPONSE_BYTES, ServerArgs, Target};
use crate::job::call::Call;
use crate::{CliError, EXIT_OK, EXIT_UNHEALTHY};

fn call_error(what: &str, status: tonic::Status) -> CliError {
    CliError::Call(format!(
        "{what}: {} ({})",
        status.message(),
        crate::outcome::code_name(status.code())
    ))
}

fn request<T>(connector: &Connector, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(connector.timeout);
    request
}

async fn model_info(connector: &Connector, server: &ServerArgs) -> Result<pb::ModelInfo, CliError> {
    let channel = connector.first(server).await?;
    let mut client = ModelClient::with_interceptor(channel, connector.auth.clone());
    let info = client
        .get_info(request(connector, pb::GetInfoRequest {}))
        .await
        .map_err(|s| call_error("Model.GetInfo", s))?;
    Ok(info.into_inner())
}

/// The width of the vectors `call` makes: the model's, or fewer with `dimensions`.
pub async fn dimensions(
    connector: &Connector,
    server: &ServerArgs,
    call: &Call,
) -> Result<usize, CliError> {
    let info = model_info(connector, server).await?;
    let hidden = info.hidden_size as usize;
    Ok(match call {
        Call::Encode(options) => options
            .dimensions
            .map_or(hidden, |d| hidden.min(d as usize)),
        Call::Classify(_) => info.labels.len(),
    })
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string(value).expect("generated types serialize")
    );
}

pub async fn info(connector: &Connector, server: &ServerArgs) -> Result<u8, CliError> {
    let info = model_info(connector, server).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&info).expect("generated types serialize")
    );
    Ok(EXIT_OK)
}

pub async fn tokenize(
    connector: &Connector,
    server: &ServerArgs,
    truncate: Option<bool>,
    texts: Vec<String>,
) -> Result<u8, CliError> {
    let channel = connector.first(server).await?;
    let mut client = TokenizerClient::with_interceptor(channel, connector.auth.clone())
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let inputs = texts
        .into_iter()
        .map(|text| pb::TextInput {
            text,
            text_pair: None,
        })
        .collect();
    let response = client
        .tokenize(request(connector, pb::TokenizeRequest { inputs, truncate }))
        .await
        .map_err(|s| call_error("Tokenizer.Tokenize", s))?;
    for result in response.into_inner().results {
        print_json(&result);
    }
    Ok(EXIT_OK)
}

pub async fn health(
    connector: &Connector,
    server: &ServerArgs,
    service: String,
) -> Result<u8, CliError> {
    let mut all_serving = true;
    for url in &server.servers {
        let target = Target::parse(url)?;
        for addr in connector.resolve(&target).await? {
            let channel = connector.channel(&target, addr)?;
            let mut client = HealthClient::with_interceptor(channel, connector.auth.clone());
            let check = client
                .check(request(
                    connector,
                    HealthCheckRequest {
                        service: service.clone(),
                    },
                ))
                .await;
            let status = match check {
                Ok(response) => {
                    let status = response.into_inner().status();
                    all_serving &=
                        status == tonic_health::pb::health_check_response::ServingStatus::Serving;
                    status.as_str_name().to_string()
                }
                Err(status) => {
                    all_serving = false;
                    format!(
                        "UNREACHABLE: {} ({})",
                        status.message(),
                        crate::outcome::code_name(status.code())
                    )
                }
            };
            println!("{url} {addr} {status}");
        }
    }
    Ok(if all_serving { EXIT_OK } else { EXIT_UNHEALTHY })
}
