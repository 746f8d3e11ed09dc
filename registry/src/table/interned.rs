//! What many agents say alike (classes, hosts, versions, and whole lists of
//! operations with their op codes), kept once for all of them. A tracked
//! agent then costs a few pointers for these instead of a dozen strings and
//! a list of its own, and comparing a heartbeat with its entry reads memory
//! that stays in the cache: agents of one class mostly report the same
//! operations in the same states.

use std::collections::HashSet;
use std::sync::Arc;

use ocs_protocol::heartbeat::OperationRef;
use ocs_protocol::{OpCode, proto};

/// The strings and operation lists in use, one copy each.
#[derive(Debug, Default)]
pub(super) struct Interned {
    strings: HashSet<Arc<str>>,
    operation_lists: HashSet<Operations>,
}

impl Interned {
    /// The shared copy of `text`.
    pub(super) fn text(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.strings.insert(shared.clone());
        shared
    }

    /// The shared list of the operations `op_codes` lists.
    pub(super) fn operations<'a>(
        &mut self,
        op_codes: impl IntoIterator<Item = OperationRef<'a>>,
    ) -> Operations {
        let listed: Vec<Operation> = op_codes
            .into_iter()
            .map(|op| Operation {
                name: self.text(op.op_name),
                op_type: self.text(op.op_type),
                code: op.op_code,
            })
            .collect();
        self.list(listed)
    }

    /// The same operations, each with the op code EXPIRED.
    pub(super) fn all_expired(&mut self, operations: &[Operation]) -> Operations {
        let expired = operations
            .iter()
            .map(|op| Operation {
                code: OpCode::Expired.value(),
                ..op.clone()
            })
            .collect();
        self.list(expired)
    }

    /// The shared list of the operations `op_codes` lists, each with the op
    /// code EXPIRED: a departing agent's, without keeping the list it said.
    pub(super) fn operations_expired<'a>(
        &mut self,
        op_codes: impl IntoIterator<Item = OperationRef<'a>>,
    ) -> Operations {
        self.operations(op_codes.into_iter().map(|op| OperationRef {
            op_code: OpCode::Expired.value(),
            ..op
        }))
    }

    fn list(&mut self, listed: Vec<Operation>) -> Operations {
        if let Some(shared) = self.operation_lists.get(listed.as_slice()) {
            return shared.clone();
        }
        let shared: Operations = Arc::from(listed);
        self.operation_lists.insert(shared.clone());
        shared
    }

    /// Lets go of what no agent uses any more.
    pub(super) fn sweep(&mut self) {
        // Lists first: they hold strings.
        self.operation_lists
            .retain(|shared| Arc::strong_count(shared) > 1);
        self.strings.retain(|shared| Arc::strong_count(shared) > 1);
    }

    /// How many strings and operation lists are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> (usize, usize) {
        (self.strings.len(), self.operation_lists.len())
    }
}

/// One operation of an agent and its op code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Operation {
    name: Arc<str>,
    op_type: Arc<str>,
    code: i32,
}

/// An agent's operations, in the order its heartbeat lists them.
pub(super) type Operations = Arc<[Operation]>;

/// Whether a heartbeat's `op_codes` say what `operations` hold.
pub(super) fn same_operations(operations: &[Operation], op_codes: &[OperationRef<'_>]) -> bool {
    operations.len() == op_codes.len()
        && operations.iter().zip(op_codes).all(|(ours, theirs)| {
            ours.code == theirs.op_code
                && *ours.name == *theirs.op_name
                && *ours.op_type == *theirs.op_type
        })
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
        let mut interned = Interned::default();
        let said = [op("acq", 3, "process"), op("count", 1, "task")];
        let first = interned.operations(refs(&said));
        let second = interned.operations(refs(&said));
        assert!(Arc::ptr_eq(&first, &second), "one list for both");
        let other = interned.operations(refs(&[op("acq", 5, "process"), op("count", 1, "task")]));
        assert!(!Arc::ptr_eq(&first, &other), "another state, another list");
        assert!(Arc::ptr_eq(&first[0].name, &other[0].name));
        assert_eq!(interned.len(), (4, 2));
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
        let expired = interned.all_expired(&first);
        assert!(expired.iter().all(|op| op.code == OpCode::Expired.value()));
        assert!(Arc::ptr_eq(&expired, &interned.all_expired(&other)));
        assert!(Arc::ptr_eq(
            &expired,
            &interned.operations_expired(refs(&said))
        ));
        drop((first, second, expired));
        interned.sweep();
        assert_eq!(interned.len(), (4, 1), "the other state is still in use");
        drop(other);
        interned.sweep();
        assert_eq!(interned.len(), (0, 0), "nobody uses them any more");
    }
}
