//! Conversions between openraft's types and our protobuf messages (`raft.proto`).
//!
//! The same messages are the wire format between nodes and the on-disk format of the
//! log and snapshot files, so openraft's own (serde) representation never leaves
//! memory and an openraft upgrade cannot silently change what is on disk. Decoding
//! checks required fields and reports a [`CodecError`] instead of panicking on input
//! from the network or the disk.

use std::collections::{BTreeMap, BTreeSet};

use ferromq_proto::raft::v1 as pb;
use openraft::EntryPayload;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};

use super::{
    Cmd, Entry, LogId, Member, Membership, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

/// A protobuf message that does not describe a valid openraft value.
#[derive(Debug, thiserror::Error)]
#[error("invalid raft message: {0}")]
pub struct CodecError(pub String);

fn missing(what: &str) -> CodecError {
    CodecError(format!("missing {what}"))
}

pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

pub fn log_id_from_pb(id: &pb::LogId) -> LogId {
    openraft::LogId::new(
        LeaderId {
            term: id.term,
            node_id: id.node_id,
        },
        id.index,
    )
}

pub fn opt_log_id_to_pb(id: Option<&LogId>) -> Option<pb::LogId> {
    id.map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(id: Option<&pb::LogId>) -> Option<LogId> {
    id.map(log_id_from_pb)
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: &pb::Vote) -> Vote {
    openraft::impls::Vote {
        leader_id: LeaderId {
            term: v.term,
            node_id: v.node_id,
        },
        committed: v.committed,
    }
}

pub fn req_vote(v: Option<&pb::Vote>) -> Result<Vote, CodecError> {
    v.map(vote_from_pb).ok_or_else(|| missing("vote"))
}

pub fn member_to_pb(m: &Member) -> pb::Node {
    pb::Node {
        addr: m.addr.clone(),
        mqtt_addr: m.mqtt_addr.clone(),
        http_addr: m.http_addr.clone(),
    }
}

pub fn member_from_pb(n: &pb::Node) -> Member {
    Member {
        addr: n.addr.clone(),
        mqtt_addr: n.mqtt_addr.clone(),
        http_addr: n.http_addr.clone(),
    }
}

pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::NodeIdSet {
                ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, member_to_pb(n))).collect(),
    }
}

pub fn membership_from_pb(m: &pb::Membership) -> Result<Membership, CodecError> {
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .iter()
        .map(|c| c.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, Member> = m
        .nodes
        .iter()
        .map(|(id, n)| (*id, member_from_pb(n)))
        .collect();
    openraft::Membership::new(configs, nodes).map_err(|e| CodecError(e.to_string()))
}

pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to_pb(m.log_id().as_ref()),
        membership: Some(membership_to_pb(m.membership())),
    }
}

pub fn stored_membership_from_pb(m: &pb::StoredMembership) -> Result<StoredMembership, CodecError> {
    let membership = match &m.membership {
        Some(mm) => membership_from_pb(mm)?,
        None => openraft::Membership::default(),
    };
    Ok(openraft::StoredMembership::new(
        opt_log_id_from_pb(m.log_id.as_ref()),
        membership,
    ))
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(m.last_log_id.as_ref()),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
    }
}

pub fn snapshot_meta_from_pb(m: &pb::SnapshotMeta) -> Result<SnapshotMeta, CodecError> {
    let last_membership = match &m.last_membership {
        Some(sm) => stored_membership_from_pb(sm)?,
        None => openraft::StoredMembership::default(),
    };
    Ok(openraft::storage::SnapshotMeta {
        last_log_id: opt_log_id_from_pb(m.last_log_id.as_ref()),
        last_membership,
    })
}

pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    use pb::entry::Payload;
    let payload = match &e.payload {
        EntryPayload::Blank => Payload::Blank(pb::Empty {}),
        EntryPayload::Normal(cmd) => Payload::Normal(cmd.0.clone()),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, CodecError> {
    use pb::entry::Payload;
    let log_id = log_id_from_pb(e.log_id.as_ref().ok_or_else(|| missing("entry log id"))?);
    let payload = match e.payload {
        Some(Payload::Blank(_)) => EntryPayload::Blank,
        Some(Payload::Normal(cmd)) => EntryPayload::Normal(Cmd(cmd)),
        Some(Payload::Membership(m)) => EntryPayload::Membership(membership_from_pb(&m)?),
        None => return Err(missing("entry payload")),
    };
    Ok(openraft::Entry { log_id, payload })
}

pub fn append_req_to_pb(r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: opt_log_id_to_pb(r.prev_log_id.as_ref()),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: opt_log_id_to_pb(r.leader_commit.as_ref()),
    }
}

pub fn append_req_from_pb(
    r: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, CodecError> {
    Ok(AppendEntriesRequest {
        vote: req_vote(r.vote.as_ref())?,
        prev_log_id: opt_log_id_from_pb(r.prev_log_id.as_ref()),
        entries: r
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_pb(r.leader_commit.as_ref()),
    })
}

pub fn append_resp_to_pb(r: &AppendEntriesResponse<TypeConfig>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let result = match r {
        AppendEntriesResponse::Success => R::Success(pb::Empty {}),
        AppendEntriesResponse::PartialSuccess(m) => R::PartialSuccess(pb::PartialSuccess {
            matching: opt_log_id_to_pb(m.as_ref()),
        }),
        AppendEntriesResponse::Conflict => R::Conflict(pb::Empty {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(v)),
    };
    pb::AppendEntriesResponse {
        result: Some(result),
    }
}

pub fn append_resp_from_pb(
    r: pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, CodecError> {
    use pb::append_entries_response::Result as R;
    Ok(match r.result.ok_or_else(|| missing("append result"))? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::PartialSuccess(p) => {
            AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(p.matching.as_ref()))
        }
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from_pb(&v)),
    })
}

pub fn vote_req_to_pb(r: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: opt_log_id_to_pb(r.last_log_id.as_ref()),
        leadership_transfer: r.leadership_transfer,
    }
}

pub fn vote_req_from_pb(r: &pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, CodecError> {
    let mut req = VoteRequest::new(
        req_vote(r.vote.as_ref())?,
        opt_log_id_from_pb(r.last_log_id.as_ref()),
    );
    req.leadership_transfer = r.leadership_transfer;
    Ok(req)
}

pub fn vote_resp_to_pb(r: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_to_pb(r.last_log_id.as_ref()),
    }
}

pub fn vote_resp_from_pb(r: &pb::VoteResponse) -> Result<VoteResponse<TypeConfig>, CodecError> {
    Ok(VoteResponse {
        vote: req_vote(r.vote.as_ref())?,
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_from_pb(r.last_log_id.as_ref()),
    })
}
