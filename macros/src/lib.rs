//! `#[subscriber]`: parses the attribute, validates it against brook's capability table
//! (`brook-caps`, the same table the runtime reads), checks the handler's signature, and
//! generates a unit struct named after the function with a short `Handler` impl that calls
//! ordinary runtime functions. Use it through the `brook` crate: `brook::subscriber` (with
//! `broker = ...`, or the in-memory broker), or one broker's `brook::kafka::subscriber`, ...

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, Meta, Token, Type};

use brook_caps::{AckPolicy, ArgKind, BrokerKind, Value};

/// Declares an async fn as a message handler. See the `brook` crate's documentation.
#[proc_macro_attribute]
pub fn subscriber(attr: TokenStream, item: TokenStream) -> TokenStream {
    entry(attr, item, None)
}

macro_rules! per_broker {
    ($($fn:ident => $kind:ident),* $(,)?) => {$(
        /// `#[subscriber]` for one broker: `brook::<broker>::subscriber`. See the `brook` crate.
        #[doc(hidden)]
        #[proc_macro_attribute]
        pub fn $fn(attr: TokenStream, item: TokenStream) -> TokenStream {
            entry(attr, item, Some(BrokerKind::$kind))
        }
    )*};
}

per_broker!(
    memory_subscriber => Memory,
    kafka_subscriber => Kafka,
    rabbit_subscriber => Rabbit,
    nats_subscriber => Nats,
    redis_subscriber => Redis,
    mqtt_subscriber => Mqtt,
);

fn entry(attr: TokenStream, item: TokenStream, fixed: Option<BrokerKind>) -> TokenStream {
    let item2 = TokenStream2::from(item.clone());
    let func = match syn::parse::<ItemFn>(item) {
        Ok(f) => f,
        Err(e) => return with_item(e, item2),
    };
    match expand(attr.into(), func, fixed) {
        Ok(tokens) => tokens.into(),
        Err(e) => with_item(e, item2),
    }
}

/// The error, plus the function as written so that its body is still checked and nothing else
/// cascades from the error.
fn with_item(e: syn::Error, item: TokenStream2) -> TokenStream {
    let err = e.to_compile_error();
    quote!(#err #item).into()
}

/// One `name = value` of the attribute, with spans to point errors at.
struct Arg {
    name: String,
    name_span: Span,
    expr: Expr,
    value: Value,
    value_span: Span,
}

fn parse_metas(attr: TokenStream2) -> syn::Result<Vec<(String, Span, Expr)>> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    metas
        .into_iter()
        .map(|meta| match meta {
            Meta::NameValue(nv) => Ok((
                nv.path.to_token_stream().to_string().replace(' ', ""),
                nv.path.span(),
                nv.value,
            )),
            other => Err(syn::Error::new(
                other.span(),
                "expected `name = value`, e.g. `topic = \"orders\"` or `ack_policy = NackOnError`",
            )),
        })
        .collect()
}

/// The value of one argument, by the kind the capability table gives it: names may be any
/// expression (or `_`, for the mount site); everything a check depends on stays literal.
fn value_of(kind: Option<ArgKind>, name: &str, expr: &Expr) -> syn::Result<Value> {
    let span = expr.span();
    let unwrapped = match expr {
        Expr::Group(g) => &*g.expr,
        other => other,
    };
    if kind == Some(ArgKind::Name) {
        return Ok(match unwrapped {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Value::Str(s.value().into()),
            Expr::Infer(_) => Value::AtMount,
            other => Value::Deferred(other.to_token_stream().to_string().into()),
        });
    }
    Ok(match unwrapped {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Str(s) => Value::Str(s.value().into()),
            Lit::Int(i) => Value::Int(i.base10_parse()?),
            Lit::Bool(b) => Value::Bool(b.value),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "expected a string, an integer, `true` or `false`",
                ))
            }
        },
        // `NackOnError` or `AckPolicy::NackOnError`: the last segment is the name.
        Expr::Path(p) => match p.path.segments.last() {
            Some(seg) => Value::Ident(seg.ident.to_string().into()),
            None => return Err(syn::Error::new(span, "expected a name")),
        },
        _ => {
            return Err(syn::Error::new(
                span,
                format!("`{name}` must be written as a literal or a name: the compile-time checks read it, so only names (topic, queue, group...) may be expressions"),
            ))
        }
    })
}

/// The brokers whose cargo feature is on; the in-memory broker is always there.
fn compiled_in() -> Vec<BrokerKind> {
    let mut kinds = vec![BrokerKind::Memory];
    if cfg!(feature = "kafka") {
        kinds.push(BrokerKind::Kafka);
    }
    if cfg!(feature = "rabbit") {
        kinds.push(BrokerKind::Rabbit);
    }
    if cfg!(feature = "nats") {
        kinds.push(BrokerKind::Nats);
    }
    if cfg!(feature = "redis") {
        kinds.push(BrokerKind::Redis);
    }
    if cfg!(feature = "mqtt") {
        kinds.push(BrokerKind::Mqtt);
    }
    kinds
}

/// The broker: fixed by the path (`brook::kafka::subscriber`), named with `broker = ...`
/// (`brook::subscriber`), or the in-memory broker. Never "whichever features are on", so that
/// turning on a feature anywhere in the dependency graph changes nothing here.
fn choose_broker(
    metas: &[(String, Span, Expr)],
    fixed: Option<BrokerKind>,
) -> syn::Result<BrokerKind> {
    let Some((_, name_span, expr)) = metas.iter().find(|(n, ..)| n == "broker") else {
        return Ok(fixed.unwrap_or(BrokerKind::Memory));
    };
    if let Some(kind) = fixed {
        return Err(syn::Error::new(
            *name_span,
            format!(
                "brook::{0}::subscriber is for {1} already: remove `broker = ...` (brook::subscriber takes `broker` for files that mix brokers)",
                kind.name(),
                kind.display_name()
            ),
        ));
    }
    let value_span = expr.span();
    let name = match value_of(None, "broker", expr)? {
        Value::Ident(n) => n.to_string(),
        other => {
            return Err(syn::Error::new(
                value_span,
                format!("`broker` takes a name such as `rabbit`, not `{other}`"),
            ))
        }
    };
    let Some(kind) = BrokerKind::from_name(&name) else {
        let names = BrokerKind::ALL.map(|b| b.name());
        let hint = match brook_caps::did_you_mean(&name, names) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("brokers: {}", names.join(", ")),
        };
        return Err(syn::Error::new(
            value_span,
            format!("unknown broker `{name}`; {hint}"),
        ));
    };
    if !compiled_in().contains(&kind) {
        return Err(syn::Error::new(
            value_span,
            format!(
                "broker `{0}` is not compiled in: enable brook's `{0}` feature (in Cargo.toml: brook = {{ version = \"...\", features = [\"{0}\"] }})",
                kind.name()
            ),
        ));
    }
    Ok(kind)
}

fn expand(
    attr: TokenStream2,
    func: ItemFn,
    fixed: Option<BrokerKind>,
) -> syn::Result<TokenStream2> {
    let metas = parse_metas(attr)?;
    let broker = choose_broker(&metas, fixed)?;

    // Every argument must be known to the capability table; its kind decides how the value
    // is read.
    let mut args = Vec::new();
    for (name, name_span, expr) in metas {
        let Some(spec) = brook_caps::argument(broker, &name) else {
            let e = brook_caps::unknown_argument(broker, &name);
            return Err(syn::Error::new(name_span, e.message));
        };
        let value = value_of(Some(spec.kind), &name, &expr)?;
        args.push(Arg {
            name,
            name_span,
            value_span: expr.span(),
            expr,
            value,
        });
    }
    let pairs: Vec<(&str, Value)> = args
        .iter()
        .map(|a| (a.name.as_str(), a.value.clone()))
        .collect();
    let span_of = |name: &str| {
        args.iter().find(|a| a.name == name).map(|a| {
            if name == "ack_policy" {
                a.value_span
            } else {
                a.name_span
            }
        })
    };
    let resolved = brook_caps::resolve(broker, &pairs).map_err(|e| {
        let span = e.argument.and_then(span_of).unwrap_or_else(Span::call_site);
        syn::Error::new(span, e.message)
    })?;

    // An output on another broker needs that broker compiled in, like a subscriber does.
    if let Some(arg) = args.iter().find(|a| a.name == "publish_broker") {
        let output = brook_caps::output_broker(broker, &pairs);
        if !compiled_in().contains(&output) {
            return Err(syn::Error::new(
                arg.value_span,
                format!(
                    "`publish_broker = {0}`: broker `{0}` is not compiled in, so the result cannot be published there; enable brook's `{0}` feature (in Cargo.toml: brook = {{ version = \"...\", features = [\"{0}\"] }})",
                    output.name()
                ),
            ));
        }
    }

    let handler_args = check_signature(&func, resolved.policy, span_of("ack_policy"))?;

    // Generate.
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let name = &sig.ident;
    let name_str = name.to_string();
    let kind = format_ident!("{}", kind_type(broker));
    let arg_values = args.iter().map(|a| {
        let n = &a.name;
        let v = value_tokens(a);
        quote!((#n, #v))
    });
    let extracted: Vec<_> = (0..handler_args.len())
        .map(|i| format_ident!("arg{}", i))
        .collect();
    let extractions = handler_args.iter().zip(&extracted).map(|((_, ty), var)| {
        quote_spanned! {ty.span()=>
            let #var = (&&&::brook::extract::Arg::<#ty, Self::Broker>::new()).extract(msg, ctx)?;
        }
    });
    let checks = handler_args.iter().map(|(pat, ty)| {
        quote_spanned! {ty.span()=>
            ::brook::extract::checked(#pat, (&&&::brook::extract::Arg::<#ty, Self::Broker>::new()).check(cx))
        }
    });
    // A handler without arguments has nothing to check: the trait's default says so.
    let check = (!handler_args.is_empty()).then(|| {
        quote! {
            fn check(&self, cx: &::brook::StartCheck<'_>) -> ::std::vec::Vec<(&'static str, ::brook::ExtractError)> {
                #[allow(unused_imports)]
                use ::brook::extract::{ViaBrokerMessage as _, ViaDecode as _, ViaFromMessage as _};
                [#(#checks),*].into_iter().flatten().collect()
            }
        }
    });
    let warnings = [
        (resolved.warning.as_ref(), "ack_policy"),
        (resolved.max_deliveries_warning.as_ref(), "max_deliveries"),
    ]
    .into_iter()
    .filter_map(|(text, arg)| text.map(|t| (t, arg)))
    .map(|(text, arg)| {
        let span = span_of(arg).unwrap_or_else(Span::call_site);
        let note = format!("brook: {text}");
        let constant = format_ident!("{arg}_degraded");
        let use_site = format_ident!("{arg}_degraded", span = span);
        quote! {
            const _: () = {
                #[deprecated(note = #note)]
                #[allow(non_upper_case_globals)]
                const #constant: () = ();
                #use_site
            };
        }
    });
    // What the function returns is taken apart (a `Result`'s error is the failure) and what
    // is left is published; errors about the return type point at it.
    let returns = match &sig.output {
        syn::ReturnType::Default => sig.ident.span(),
        syn::ReturnType::Type(_, ty) => ty.span(),
    };
    let publish = quote_spanned! {returns=>
        let value = (&returned).brook_result().split(returned)?;
        (&value).brook_output().output(value)
    };
    // What the handler says of itself for documents (AsyncAPI): its doc comment, the
    // payload it decodes and the result it publishes, picked by the same autoref dispatch.
    let doc_text = doc_comment(&attrs);
    let described_doc = (!doc_text.is_empty()).then(|| quote!(d.doc(#doc_text);));
    let described_args = handler_args.iter().map(|(_, ty)| {
        quote! {
            (&&&&::brook::asyncapi::describe::Arg::<#ty, Self::Broker>::new()).describe_arg(d);
        }
    });
    let described_result = match &sig.output {
        syn::ReturnType::Default => None,
        syn::ReturnType::Type(_, ty) => published_type(ty),
    }
    .map(|ty| {
        quote! {
            (&&::brook::asyncapi::describe::Arg::<#ty, Self::Broker>::new()).describe_result(d);
        }
    });
    let handle_sig = syn::Signature {
        ident: format_ident!("handle", span = name.span()),
        ..sig.clone()
    };
    let doc = format!(
        "Subscriber `{name_str}` on {} `{}` (ack_policy = {}). Register it with `App::subscribe({name_str})`; call [`{name_str}::handle`] to run the function directly.",
        resolved.source.describe(),
        resolved.source_name,
        resolved.policy,
    );

    Ok(quote! {
        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        #vis struct #name;

        impl #name {
            /// The function as written.
            #(#attrs)*
            #vis #handle_sig #block
        }

        impl ::brook::Handler for #name {
            type Broker = ::brook::kind::#kind;

            fn subscription(&self) -> ::brook::SubscriptionBuilder {
                ::brook::Subscription::from_macro(::brook::BrokerKind::#kind, #name_str, [#(#arg_values),*])
            }

            #check

            // The borrows pick an impl (autoref specialization): they are not needless.
            #[allow(clippy::needless_borrow)]
            fn describe(&self, d: &mut ::brook::asyncapi::Describe) {
                #[allow(unused_imports)]
                use ::brook::asyncapi::describe::{ViaBrokerMessage as _, ViaFromMessage as _, ViaNoSchema as _, ViaSchema as _};
                #described_doc
                #(#described_args)*
                #described_result
            }

            // The borrows pick an impl (autoref specialization): they are not needless.
            #[allow(clippy::needless_borrow, clippy::let_unit_value)]
            async fn call(&self, msg: &::brook::Message, ctx: &::brook::Context) -> ::brook::HandlerResult {
                #[allow(unused_imports)]
                use ::brook::extract::{ViaBrokerMessage as _, ViaDecode as _, ViaFromMessage as _};
                #[allow(unused_imports)]
                use ::brook::output::dispatch::{ViaIntoOutput as _, ViaResult as _, ViaSerialize as _, ViaValue as _};
                #(#extractions)*
                let returned = Self::handle(#(#extracted),*).await;
                #publish
            }
        }

        #(#warnings)*
    })
}

/// The function's doc comment, one line per `///` line.
fn doc_comment(attrs: &[syn::Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value:
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }),
                ..
            }) => Some(s.value()),
            _ => None,
        })
        .map(|line| line.strip_prefix(' ').unwrap_or(&line).to_owned())
        .collect();
    lines.join("\n").trim().to_owned()
}

/// The type a handler publishes, from its return type: what is left of it once `Result`,
/// `Option` and `Publish` are taken off (by name, as the runtime's dispatch takes them apart by
/// type); `None` for `()` and for what cannot be named (`impl Trait`).
fn published_type(ty: &syn::Type) -> Option<syn::Type> {
    match ty {
        syn::Type::Tuple(t) if t.elems.is_empty() => None,
        syn::Type::Paren(p) => published_type(&p.elem),
        syn::Type::Group(g) => published_type(&g.elem),
        syn::Type::ImplTrait(_) | syn::Type::Infer(_) | syn::Type::Never(_) => None,
        syn::Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            let wrapper = ["Result", "Option", "Publish"]
                .iter()
                .any(|w| last.ident == w);
            match (&last.arguments, wrapper) {
                (syn::PathArguments::AngleBracketed(args), true) => {
                    let inner = args.args.iter().find_map(|a| match a {
                        syn::GenericArgument::Type(t) => Some(t),
                        _ => None,
                    })?;
                    published_type(inner)
                }
                _ if has_impl_trait(ty) => None,
                _ => Some(ty.clone()),
            }
        }
        other if has_impl_trait(other) => None,
        other => Some(other.clone()),
    }
}

/// Whether `impl Trait` occurs anywhere in `ty` (such a type cannot be named in the
/// generated `describe`).
fn has_impl_trait(ty: &syn::Type) -> bool {
    use syn::{GenericArgument, PathArguments, Type};
    match ty {
        Type::ImplTrait(_) => true,
        Type::Paren(t) => has_impl_trait(&t.elem),
        Type::Group(t) => has_impl_trait(&t.elem),
        Type::Reference(t) => has_impl_trait(&t.elem),
        Type::Ptr(t) => has_impl_trait(&t.elem),
        Type::Slice(t) => has_impl_trait(&t.elem),
        Type::Array(t) => has_impl_trait(&t.elem),
        Type::Tuple(t) => t.elems.iter().any(has_impl_trait),
        Type::Path(p) => p
            .path
            .segments
            .iter()
            .any(|segment| match &segment.arguments {
                PathArguments::AngleBracketed(args) => args.args.iter().any(|a| match a {
                    GenericArgument::Type(t) => has_impl_trait(t),
                    _ => false,
                }),
                PathArguments::Parenthesized(args) => args.inputs.iter().any(has_impl_trait),
                PathArguments::None => false,
            }),
        _ => false,
    }
}

fn kind_type(broker: BrokerKind) -> &'static str {
    match broker {
        BrokerKind::Memory => "Memory",
        BrokerKind::Kafka => "Kafka",
        BrokerKind::Rabbit => "Rabbit",
        BrokerKind::Nats => "Nats",
        BrokerKind::Redis => "Redis",
        BrokerKind::Mqtt => "Mqtt",
    }
}

fn value_tokens(arg: &Arg) -> TokenStream2 {
    match &arg.value {
        Value::Str(s) => {
            let s = s.as_ref();
            quote!(::brook::ArgValue::from(#s))
        }
        Value::Deferred(_) => {
            let expr = &arg.expr;
            quote_spanned!(arg.value_span=> ::brook::extract::name(#expr))
        }
        Value::AtMount => quote!(::brook::ArgValue::AtMount),
        Value::Ident(s) => {
            let s = s.as_ref();
            quote!(::brook::ArgValue::Ident(::std::borrow::Cow::Borrowed(#s)))
        }
        Value::Int(i) => quote!(::brook::ArgValue::Int(#i)),
        Value::Bool(b) => quote!(::brook::ArgValue::Bool(#b)),
    }
}

/// Checks the handler's signature; returns each argument's pattern (for start-time errors)
/// and type, in order. Which broker a message type belongs to is checked by trait bounds in
/// the generated code, not here.
fn check_signature(
    func: &ItemFn,
    policy: AckPolicy,
    policy_span: Option<Span>,
) -> syn::Result<Vec<(String, Type)>> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            format!(
                "#[subscriber] needs an async fn: write `async fn {}(...)`",
                sig.ident
            ),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a #[subscriber] fn cannot be generic: brook must know the payload type to decode it",
        ));
    }
    let mut args = Vec::new();
    let mut settles = false;
    for input in &sig.inputs {
        let (pat, ty) = match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "a #[subscriber] fn cannot take `self`; use `State<T>` for shared state",
                ))
            }
            FnArg::Typed(t) => (t.pat.to_token_stream().to_string(), &*t.ty),
        };
        settles |= is_message_ref(ty);
        args.push((pat, ty.clone()));
    }
    if policy == AckPolicy::Manual && !settles {
        return Err(syn::Error::new(
            policy_span.unwrap_or_else(|| sig.ident.span()),
            format!(
                "ack_policy = Manual leaves settlement to the handler, but `{}` takes no `msg: &Message` to call msg.ack() / nack() / reject() on; add that argument, or choose another ack_policy (NackOnError, RejectOnError, Ack)",
                sig.ident
            ),
        ));
    }
    Ok(args)
}

/// `&Message`, `&KafkaMessage`, `&my::Message`...: a message the handler can settle. Only a
/// hint for the Manual check (a settling type under another name needs `msg.ack()` anyway).
fn is_message_ref(ty: &Type) -> bool {
    let Type::Reference(r) = ty else {
        return false;
    };
    match &*r.elem {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident.to_string().ends_with("Message")),
        _ => false,
    }
}

/// The conformance suite for one broker's adapter, with the tests its source cannot run
/// generated as skipped (`#[ignore]`, visible in the test output). Which tests those are comes
/// from the capability table: the invocation declares the source's shape (the subscriber
/// arguments that choose it, names as `_`), never capabilities, and a generated test checks
/// that the adapter's real source has that shape. Used through
/// `brook_runtime::conformance_tests!`.
#[doc(hidden)]
#[proc_macro]
pub fn conformance_tests(input: TokenStream) -> TokenStream {
    match conformance(input.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The suite's tests, and the capability each needs beyond the common ground.
const CONFORMANCE_TESTS: &[(&str, Need)] = &[
    ("ack_policy_acks_on_success", Need::Nothing),
    ("ack_policy_acks_on_error", Need::Nothing),
    ("ack_first_acks_before_the_handler", Need::Nothing),
    ("reject_on_error_acks_on_success", Need::Nothing),
    ("reject_on_error_rejects_on_error", Need::Nothing),
    ("nack_on_error_redelivers", Need::Nothing),
    ("panics_are_errors_and_the_consumer_survives", Need::Nothing),
    (
        "manual_leaves_unsettled_messages_for_redelivery",
        Need::Nothing,
    ),
    ("manual_settlements_take_effect", Need::Nothing),
    ("manual_nack_redelivers", Need::Nothing),
    ("interrupts_settle_under_every_policy", Need::Nothing),
    ("the_first_settlement_wins", Need::Nothing),
    ("max_deliveries_stops_redelivery_loops", Need::DeliveryCount),
    ("undecodable_payloads_are_rejected", Need::Nothing),
    ("shutdown_lets_in_flight_handlers_finish", Need::Nothing),
    (
        "graceful_timeout_leaves_the_message_for_redelivery",
        Need::Nothing,
    ),
    ("concurrency_runs_handlers_in_parallel", Need::Nothing),
    ("messages_are_handled_in_order", Need::Nothing),
    ("nack_delay_is_honoured", Need::NackDelay),
    ("every_policy_and_handler_outcome", Need::Nothing),
    ("stopping_leaves_no_task_behind", Need::Nothing),
];

#[derive(Clone, Copy)]
enum Need {
    Nothing,
    DeliveryCount,
    NackDelay,
}

fn conformance(input: TokenStream2) -> syn::Result<TokenStream2> {
    let parser = |stream: syn::parse::ParseStream| {
        let adapter: Expr = stream.parse()?;
        stream.parse::<Token![;]>()?;
        let rest: TokenStream2 = stream.parse()?;
        Ok((adapter, rest))
    };
    let (adapter, rest) = parser.parse2(input)?;
    let metas = parse_metas(rest)?;
    let Some((_, _, broker_expr)) = metas.iter().find(|(n, ..)| n == "broker") else {
        return Err(syn::Error::new(
            Span::call_site(),
            "name the broker: conformance_tests!(Adapter::new(); broker = rabbit, queue = _, ...)",
        ));
    };
    let broker = match value_of(None, "broker", broker_expr)? {
        Value::Ident(n) => BrokerKind::from_name(&n),
        _ => None,
    }
    .ok_or_else(|| syn::Error::new(broker_expr.span(), "unknown broker"))?;
    let mut pairs = Vec::new();
    for (name, span, expr) in metas.iter().filter(|(n, ..)| n != "broker") {
        let spec = brook_caps::argument(broker, name).ok_or_else(|| {
            syn::Error::new(*span, brook_caps::unknown_argument(broker, name).message)
        })?;
        pairs.push((name.as_str(), value_of(Some(spec.kind), name, expr)?));
    }
    let resolved = brook_caps::resolve(broker, &pairs)
        .map_err(|e| syn::Error::new(Span::call_site(), e.message))?;
    let source = resolved.source;
    let features = source.features();
    let dead_letters = features.dead_letters(|arg| pairs.iter().any(|(n, _)| *n == arg));
    let what = source.table_name();
    let tests = CONFORMANCE_TESTS.iter().map(|(test, need)| {
        let ident = format_ident!("{}", test);
        let skip = match need {
            Need::DeliveryCount if features.delivery_count == brook_caps::DeliveryCount::None => {
                Some(format!("skipped: {what} counts no deliveries (brook-caps), so max_deliveries cannot apply"))
            }
            Need::NackDelay if !features.nack_delay => {
                Some(format!("skipped: {what} has no nack delay (brook-caps)"))
            }
            _ => None,
        };
        let ignore = skip.map(|reason| quote!(#[ignore = #reason]));
        quote! {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #ignore
            async fn #ident() {
                ::brook_runtime::conformance::#ident(::std::sync::Arc::new(#adapter)).await;
            }
        }
    });
    let source_tokens = source_tokens(source);
    Ok(quote! {
        #(#tests)*

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_declared_source_is_the_adapters() {
            ::brook_runtime::conformance::declared_source(
                ::std::sync::Arc::new(#adapter),
                #source_tokens,
                #dead_letters,
            )
            .await;
        }
    })
}

fn source_tokens(source: brook_caps::Source) -> TokenStream2 {
    use brook_caps::Source as S;
    match source {
        S::MemoryTopic => quote!(::brook_runtime::Source::MemoryTopic),
        S::KafkaTopic { grouped } => {
            quote!(::brook_runtime::Source::KafkaTopic { grouped: #grouped })
        }
        S::RabbitQueue { quorum } => {
            quote!(::brook_runtime::Source::RabbitQueue { quorum: #quorum })
        }
        S::NatsCore => quote!(::brook_runtime::Source::NatsCore),
        S::JetStream => quote!(::brook_runtime::Source::JetStream),
        S::RedisChannel => quote!(::brook_runtime::Source::RedisChannel),
        S::RedisList => quote!(::brook_runtime::Source::RedisList),
        S::RedisStream { grouped } => {
            quote!(::brook_runtime::Source::RedisStream { grouped: #grouped })
        }
        S::MqttTopic { qos } => quote!(::brook_runtime::Source::MqttTopic { qos: #qos }),
    }
}
