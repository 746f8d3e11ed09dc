//! What many agents say alike (classes, hosts, versions, operation names
//! and types), kept once for all of them. A tracked agent then costs a few
//! pointers for these instead of a dozen strings of its own, and comparing a
//! heartbeat with its entry reads strings that stay in the cache.

use std::collections::HashSet;
use std::sync::Arc;

use ocs_protocol::heartbeat::OperationRef;
use ocs_protocol::{OpCode, proto};

/// The strings in use, one copy each.
#[derive(Debug, Default)]
pub(super) struct SharedStrings {
    strings: HashSet<Arc<str>>,
}

impl SharedStrings {
    /// The shared copy of `text`.
    pub(super) fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.strings.insert(shared.clone());
        shared
    }

    /// Lets go of the strings no agent uses any more.
    pub(super) fn sweep(&mut self) {
        self.strings.retain(|shared| Arc::strong_count(shared) > 1);
    }

    /// How many strings are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.strings.len()
    }
}

/// One operation of an agent and its op code.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Operation {
    name: Arc<str>,
    op_type: Arc<str>,
    code: i32,
}

/// An agent's operations, in the order its heartbeat lists them.
pub(super) type Operations = Box<[Operation]>;

/// The operations `op_codes` lists, their strings shared.
pub(super) fn operations<'a>(
    strings: &mut SharedStrings,
    op_codes: impl IntoIterator<Item = OperationRef<'a>>,
) -> Operations {
    op_codes
        .into_iter()
        .map(|op| Operation {
            name: strings.get(op.op_name),
            op_type: strings.get(op.op_type),
            code: op.op_code,
        })
        .collect()
}

/// Whether a heartbeat's `op_codes` say what `operations` hold.
pub(super) fn same_operations(operations: &[Operation], op_codes: &[OperationRef<'_>]) -> bool {
    operations.len() == op_codes.len()
        && operations.iter().zip(op_codes).all(|(ours, theirs)| {
            ours.code == theirs.op_code
                && *ours.name == *theirs.op_name
                && *ours.op_type == *theirs.op_type
        })
}

/// The same operations, each with the op code EXPIRED.
pub(super) fn all_expired(operations: &[Operation]) -> Operations {
    operations
        .iter()
        .map(|op| Operation {
            code: OpCode::Expired.value(),
            ..op.clone()
        })
        .collect()
}

/// The wire form of `operations`.
pub(super) fn op_codes(operations: &[Operation]) -> Vec<proto::OperationCode> {
    operations
        .iter()
        .map(|op| proto::OperationCode {
            op_name: op.name.to_string(),
            op_code: op.code,
            op_type: op.op_type.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, code: i32, op_type: &str) -> proto::OperationCode {
        proto::OperationCode {
            op_name: name.into(),
            op_code: code,
            op_type: op_type.into(),
        }
    }

    fn refs(ops: &[proto::OperationCode]) -> Vec<OperationRef<'_>> {
        ops.iter().map(OperationRef::from).collect()
    }

    #[test]
    fn operations_share_their_strings_compare_by_content_and_are_let_go() {
        let mut strings = SharedStrings::default();
        let said = [op("acq", 3, "process"), op("count", 1, "task")];
        let first = operations(&mut strings, refs(&said));
        let second = operations(&mut strings, refs(&said));
        assert!(Arc::ptr_eq(&first[0].name, &second[0].name));
        assert_eq!(strings.len(), 4);
        assert!(same_operations(&first, &refs(&said)));
        assert!(!same_operations(&first, &refs(&said[..1])));
        assert!(!same_operations(
            &first,
            &refs(&[op("acq", 5, "process"), op("count", 1, "task")])
        ));
        assert!(!same_operations(
            &first,
            &refs(&[op("acq", 3, "task"), op("count", 1, "task")])
        ));
        assert_eq!(op_codes(&first), said);
        assert!(
            all_expired(&first)
                .iter()
                .all(|op| op.code == OpCode::Expired.value())
        );
        drop((first, second));
        strings.sweep();
        assert_eq!(strings.len(), 0, "nobody uses them any more");
    }
}
