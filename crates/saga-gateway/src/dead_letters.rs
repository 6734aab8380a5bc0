//! The dead-letter RPCs: `SAGA_DLQ` for tools, the same operations as `sagactl dlq`
//! (`saga_nats::dead_letters`).

use async_nats::jetstream;
use saga_nats::dead_letters::{self as dl, DeadLetter};
use saga_nats::NatsError;
use saga_proto as pb;
use tonic::Status;

/// Default and largest page of `ListDeadLetters`.
const MAX_LIST: usize = 1000;

fn status(e: NatsError) -> Status {
    match e {
        NatsError::NoDeadLetter(_) => Status::not_found(e.to_string()),
        NatsError::InvalidName(_) | NatsError::InvalidConfig(_) => {
            Status::invalid_argument(e.to_string())
        }
        NatsError::DeadLetters { .. } => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn view(l: DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        id: l.id,
        time: l.time.clone(),
        subject: l.original_subject().to_string(),
        position: l.original_position(),
        consumer: l.consumer().to_string(),
        deliveries: l.deliveries().to_string(),
        reason: l.reason().to_string(),
        errors_json: l.errors().unwrap_or_default().to_string(),
        headers: l.headers.clone().into_iter().collect(),
        redrives: l
            .redrives
            .iter()
            .map(|(subject, sequence)| pb::Redrive {
                subject: subject.clone(),
                sequence: *sequence,
            })
            .collect(),
        payload: l.payload,
    }
}

fn source(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|s| !s.is_empty())
}

pub(crate) async fn list(
    js: &jetstream::Context,
    req: pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse, Status> {
    let limit = match req.limit {
        0 => MAX_LIST,
        n => (n as usize).min(MAX_LIST),
    };
    let letters = dl::list_dead_letters(js, source(&req.source), limit)
        .await
        .map_err(status)?;
    Ok(pb::ListDeadLettersResponse {
        dead_letters: letters.into_iter().map(view).collect(),
    })
}

pub(crate) async fn get(js: &jetstream::Context, id: u64) -> Result<pb::DeadLetter, Status> {
    dl::get_dead_letter(js, id).await.map(view).map_err(status)
}

pub(crate) async fn redrive(
    js: &jetstream::Context,
    req: pb::RedriveDeadLetterRequest,
) -> Result<pb::RedriveDeadLetterResponse, Status> {
    let r = dl::redrive_dead_letter(js, req.id, source(&req.to))
        .await
        .map_err(status)?;
    Ok(pb::RedriveDeadLetterResponse {
        id: r.id,
        subject: r.subject,
        sequence: r.sequence,
        duplicate: r.duplicate,
    })
}

pub(crate) async fn purge(
    js: &jetstream::Context,
    req: pb::PurgeDeadLettersRequest,
) -> Result<pb::PurgeDeadLettersResponse, Status> {
    if !req.confirm {
        return Err(Status::failed_precondition(
            "confirm: purging deletes dead letters for good; set confirm to true",
        ));
    }
    let purged = dl::purge_dead_letters(js, source(&req.source))
        .await
        .map_err(status)?;
    tracing::warn!(purged, source = %req.source, "dead letters purged");
    Ok(pb::PurgeDeadLettersResponse { purged })
}
