//! What a handler says about itself for documents: the payload it decodes, the result it
//! publishes, its doc comment. `#[subscriber]` writes [`Handler::describe`](crate::Handler::describe)
//! with the same autoref dispatch it uses to extract arguments, so a payload type with a
//! JSON Schema (`#[derive(schemars::JsonSchema)]`, with brook's `asyncapi` feature) is shown
//! with it, and one without still appears, marked as having none.

use std::marker::PhantomData;

use crate::codec;
use crate::extract::{BrokerMessage, FromMessage};

/// What a handler tells a document about itself; filled in by
/// [`Handler::describe`](crate::Handler::describe).
///
/// A hand-written handler describes its payload and result like this:
///
/// ```
/// use brook_runtime::asyncapi::Describe;
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
/// fn describe(d: &mut Describe) {
///     d.doc("Bills an order.");
///     d.payload_without_schema::<Order>();
/// }
/// let mut d = Describe::default();
/// describe(&mut d);
/// assert_eq!(d.payload().map(|p| p.rust_type), Some(std::any::type_name::<Order>()));
/// ```
#[derive(Default)]
pub struct Describe {
    doc: Option<String>,
    payload: Option<Shape>,
    result: Option<Shape>,
    #[cfg(feature = "asyncapi")]
    pub(crate) schemas: Option<schemars::SchemaGenerator>,
}

impl std::fmt::Debug for Describe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Describe")
            .field("doc", &self.doc)
            .field("payload", &self.payload)
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

/// A message body as a document shows it: the Rust type, the content type it is sent with,
/// and its JSON Schema where the type has one.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Shape {
    /// `std::any::type_name` of the type.
    pub rust_type: &'static str,
    /// The content type brook's codec sends and expects for it (JSON, text or bytes).
    pub content_type: &'static str,
    /// Its JSON Schema (draft 7, `$ref`s into `#/components/schemas`), or `None` when the
    /// type has none.
    pub schema: Option<serde_json::Value>,
}

impl Shape {
    /// A result brook publishes but the handler could not describe (a hand-written handler, a
    /// return type the macro cannot name).
    #[cfg(feature = "asyncapi")]
    pub(crate) fn undescribed() -> Shape {
        Shape {
            rust_type: "UndescribedResult",
            content_type: codec::JSON,
            schema: Some(serde_json::json!({
                "description": "Not described: the handler's result type is not known here (a hand-written Handler, or a return type behind `impl Trait`)."
            })),
        }
    }

    fn of<T: ?Sized>(schema: Option<serde_json::Value>) -> Shape {
        let rust_type = std::any::type_name::<T>();
        // As brook's codec sends it: a value that serializes as a plain string goes as text.
        let string_schema = schema.as_ref().is_some_and(|s| {
            s.get("type").and_then(|t| t.as_str()) == Some("string")
                && s.get("enum").is_none()
                && s.get("const").is_none()
        });
        let content_type = match rust_type {
            "alloc::string::String" | "&str" | "alloc::borrow::Cow<str>" => codec::TEXT,
            "bytes::bytes::Bytes" => codec::OCTET_STREAM,
            _ if string_schema => codec::TEXT,
            _ => codec::JSON,
        };
        Shape {
            rust_type,
            content_type,
            schema,
        }
    }
}

impl Describe {
    /// The handler's documentation (its doc comment): the first line is the summary.
    pub fn doc(&mut self, text: impl Into<String>) {
        let text = text.into();
        if !text.trim().is_empty() {
            self.doc = Some(text);
        }
    }

    /// The payload is a `T`, with its JSON Schema.
    #[cfg(feature = "asyncapi")]
    pub fn payload_with_schema<T: schemars::JsonSchema + ?Sized>(&mut self) {
        let schema = self.schema_of::<T>();
        self.payload = Some(Shape::of::<T>(schema));
    }

    /// The payload is a `T`, which has no JSON Schema.
    pub fn payload_without_schema<T: ?Sized>(&mut self) {
        self.payload = Some(Shape::of::<T>(None));
    }

    /// The payload is text (`text/plain`), taken as it is.
    pub fn text_payload(&mut self) {
        self.payload = Some(Shape {
            rust_type: "alloc::string::String",
            content_type: codec::TEXT,
            schema: Some(serde_json::json!({ "type": "string" })),
        });
    }

    /// The payload is bytes (no content type), taken as they are.
    pub fn bytes_payload(&mut self) {
        self.payload = Some(Shape {
            rust_type: "bytes::bytes::Bytes",
            content_type: codec::OCTET_STREAM,
            schema: Some(serde_json::json!({ "type": "string", "format": "binary" })),
        });
    }

    /// The handler publishes (or replies with) a `T`, with its JSON Schema.
    #[cfg(feature = "asyncapi")]
    pub fn result_with_schema<T: schemars::JsonSchema + ?Sized>(&mut self) {
        let schema = self.schema_of::<T>();
        self.result = Some(Shape::of::<T>(schema));
    }

    /// The handler publishes (or replies with) a `T`, which has no JSON Schema.
    pub fn result_without_schema<T: ?Sized>(&mut self) {
        self.result = Some(Shape::of::<T>(None));
    }

    /// The doc comment, if any.
    pub fn documentation(&self) -> Option<&str> {
        self.doc.as_deref()
    }

    /// The payload, if the handler decodes one.
    pub fn payload(&self) -> Option<&Shape> {
        self.payload.as_ref()
    }

    /// The result, if the handler returns a value to publish.
    pub fn result(&self) -> Option<&Shape> {
        self.result.as_ref()
    }

    /// Takes what was described, leaving the schema generator for the next handler.
    #[cfg(feature = "asyncapi")]
    pub(crate) fn take(&mut self) -> Described {
        Described {
            doc: self.doc.take(),
            payload: self.payload.take(),
            result: self.result.take(),
        }
    }

    #[cfg(feature = "asyncapi")]
    fn schema_of<T: schemars::JsonSchema + ?Sized>(&mut self) -> Option<serde_json::Value> {
        let generator = self
            .schemas
            .get_or_insert_with(super::document::schema_generator);
        let mut schema = generator.subschema_for::<T>();
        for transform in generator.transforms_mut() {
            transform.transform(&mut schema);
        }
        Some(schema.to_value())
    }
}

/// What one handler described, taken out of a [`Describe`].
#[cfg(feature = "asyncapi")]
#[derive(Debug, Clone, Default)]
pub(crate) struct Described {
    pub(crate) doc: Option<String>,
    pub(crate) payload: Option<Shape>,
    pub(crate) result: Option<Shape>,
}

/// Macro support, not an API: `(&&&&Arg::<T, K>::new()).describe_arg(d)` mirrors
/// [`extract::Arg`](crate::extract): a broker's message type and a
/// [`FromMessage`] extractor describe nothing; a decoded payload describes itself, with its
/// JSON Schema if it has one (autoref specialization, tried in that order).
#[doc(hidden)]
pub struct Arg<T: ?Sized, K>(PhantomData<Marker<T, K>>);

type Marker<T, K> = fn() -> (PhantomData<T>, K);

impl<T: ?Sized, K> Arg<T, K> {
    #[doc(hidden)]
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Arg(PhantomData)
    }
}

#[doc(hidden)]
pub trait ViaBrokerMessage<'a> {
    fn describe_arg(&self, d: &mut Describe);
}

impl<'a, T: BrokerMessage, K> ViaBrokerMessage<'a> for &&&Arg<&'a T, K> {
    fn describe_arg(&self, _: &mut Describe) {}
}

#[doc(hidden)]
pub trait ViaFromMessage<'a> {
    fn describe_arg(&self, d: &mut Describe);
}

impl<'a, T: FromMessage<'a>, K> ViaFromMessage<'a> for &&Arg<T, K> {
    fn describe_arg(&self, d: &mut Describe) {
        T::describe(d);
    }
}

#[doc(hidden)]
pub trait ViaSchema {
    fn describe_arg(&self, d: &mut Describe);
    fn describe_result(&self, d: &mut Describe);
}

#[cfg(feature = "asyncapi")]
impl<T: schemars::JsonSchema + ?Sized, K> ViaSchema for &Arg<T, K> {
    fn describe_arg(&self, d: &mut Describe) {
        d.payload_with_schema::<T>();
    }
    fn describe_result(&self, d: &mut Describe) {
        d.result_with_schema::<T>();
    }
}

#[doc(hidden)]
pub trait ViaNoSchema {
    fn describe_arg(&self, d: &mut Describe);
    fn describe_result(&self, d: &mut Describe);
}

impl<T: ?Sized, K> ViaNoSchema for Arg<T, K> {
    fn describe_arg(&self, d: &mut Describe) {
        d.payload_without_schema::<T>();
    }
    fn describe_result(&self, d: &mut Describe) {
        d.result_without_schema::<T>();
    }
}
