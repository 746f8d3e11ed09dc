//! Typed, validated operation parameters.

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The parameters of an operation, decoded from the request's MessagePack map.
///
/// Derive `Deserialize` with `#[serde(deny_unknown_fields)]` so that a misspelt
/// key is refused, as OCS refuses "unexpected values"; give optional keys a
/// `#[serde(default)]`. Override [`Params::validate`] for range checks and
/// [`Params::describe`] to document the keys in `ocs api`.
pub trait Params: DeserializeOwned + Send + 'static {
    /// `(name, description)` of every accepted key.
    fn describe() -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }

    /// Checks values after decoding; the error text is returned to the client.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Parameters of an operation that takes none; any key is refused.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

impl Params for NoParams {}

/// Decodes and validates params; the error is the text of an OCS `ParamError`.
///
/// The map is read as plain values first and then typed, so that an error
/// names the parameter and the type it wanted ("delay: invalid type: string
/// \"abc\", expected f64") rather than a MessagePack marker.
pub(crate) fn decode<P: Params>(op_name: &str, bytes: &[u8]) -> Result<P, String> {
    let fail = |reason: String| format!("Param error for \"{op_name}\": {reason}");
    let values: serde_json::Value =
        ocs_protocol::codec::from_msgpack(bytes).map_err(|err| fail(err.to_string()))?;
    let params: P = serde_path_to_error::deserialize(values).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        fail(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })?;
    params
        .validate()
        .map_err(|reason| format!("Param error for \"{op_name}\": {reason}"))?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocs_protocol::codec::to_msgpack;
    use serde_json::json;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Count {
        target: u32,
    }
    impl Params for Count {
        fn validate(&self) -> Result<(), String> {
            if self.target > 100 {
                return Err(format!("target={} is above 100", self.target));
            }
            Ok(())
        }
    }

    #[test]
    fn decodes_validates_and_refuses_unknown_keys() {
        let ok = to_msgpack(&json!({"target": 3})).unwrap();
        assert_eq!(decode::<Count>("count", &ok).unwrap().target, 3);
        for bad in [
            json!({"target": 300}),
            json!({"target": "three"}),
            json!({"target": 3, "extra": 1}),
            json!({}),
        ] {
            let bytes = to_msgpack(&bad).unwrap();
            let err = decode::<Count>("count", &bytes).map(|_| ()).unwrap_err();
            assert!(err.starts_with("Param error for \"count\""), "{err}");
        }
        let err = decode::<Count>("count", &to_msgpack(&json!({"target": "abc"})).unwrap())
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            err,
            "Param error for \"count\": target: invalid type: string \"abc\", expected u32"
        );
        assert!(decode::<NoParams>("x", &[]).is_ok());
        assert!(decode::<NoParams>("x", &to_msgpack(&json!({"a": 1})).unwrap()).is_err());
    }
}
