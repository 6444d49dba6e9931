//! `#[subscriber]`: parses the attribute, validates it against brook's capability table
//! (`brook-caps`, the same table the runtime reads), checks the handler's signature, and
//! generates a unit struct named after the function with a short `Handler` impl that calls
//! ordinary runtime functions. Use it through the `brook` crate.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, FnArg, ItemFn, Lit, Meta, Token, Type};

use brook_caps::{AckPolicy, BrokerKind, Value};

/// Declares an async fn as a message handler. See the `brook` crate's documentation.
#[proc_macro_attribute]
pub fn subscriber(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item2 = TokenStream2::from(item.clone());
    let func = match syn::parse::<ItemFn>(item) {
        Ok(f) => f,
        Err(e) => return with_item(e, item2),
    };
    match expand(attr.into(), func) {
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
    value: Value,
    value_span: Span,
}

fn parse_args(attr: TokenStream2) -> syn::Result<Vec<Arg>> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    metas
        .into_iter()
        .map(|meta| {
            let nv = match meta {
                Meta::NameValue(nv) => nv,
                other => {
                    return Err(syn::Error::new(
                        other.span(),
                        "expected `name = value`, e.g. `topic = \"orders\"` or `ack_policy = NackOnError`",
                    ))
                }
            };
            let name = nv.path.to_token_stream().to_string().replace(' ', "");
            let value_span = nv.value.span();
            let value = match &nv.value {
                Expr::Lit(lit) => match &lit.lit {
                    Lit::Str(s) => Value::Str(s.value().into()),
                    Lit::Int(i) => Value::Int(i.base10_parse()?),
                    Lit::Bool(b) => Value::Bool(b.value),
                    other => return Err(syn::Error::new(other.span(), "expected a string, an integer, `true` or `false`")),
                },
                // `NackOnError` or `AckPolicy::NackOnError`: the last segment is the name.
                Expr::Path(p) => match p.path.segments.last() {
                    Some(seg) => Value::Ident(seg.ident.to_string().into()),
                    None => return Err(syn::Error::new(value_span, "expected a name")),
                },
                other => return Err(syn::Error::new(other.span(), "expected a literal or a name")),
            };
            Ok(Arg { name, name_span: nv.path.span(), value, value_span })
        })
        .collect()
}

/// The brokers whose cargo feature is on; the in-memory broker is always there.
fn compiled_in() -> Vec<BrokerKind> {
    let mut kinds = Vec::new();
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

fn choose_broker(args: &[Arg]) -> syn::Result<BrokerKind> {
    let compiled = compiled_in();
    let Some(arg) = args.iter().find(|a| a.name == "broker") else {
        return match compiled.as_slice() {
            [] => Ok(BrokerKind::Memory),
            [one] => Ok(*one),
            several => {
                let names: Vec<_> = several.iter().map(|b| b.name()).collect();
                Err(syn::Error::new(
                    Span::call_site(),
                    format!(
                        "several brokers are compiled in ({}), so #[subscriber] needs to be told which one: add broker = {} (or another of them)",
                        names.join(", "),
                        names[0]
                    ),
                ))
            }
        };
    };
    let name = match &arg.value {
        Value::Ident(n) => n.to_string(),
        other => {
            return Err(syn::Error::new(
                arg.value_span,
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
            arg.value_span,
            format!("unknown broker `{name}`; {hint}"),
        ));
    };
    if kind != BrokerKind::Memory && !compiled.contains(&kind) {
        return Err(syn::Error::new(
            arg.value_span,
            format!(
                "broker `{0}` is not compiled in: enable brook's `{0}` feature (in Cargo.toml: brook = {{ version = \"...\", features = [\"{0}\"] }})",
                kind.name()
            ),
        ));
    }
    Ok(kind)
}

fn expand(attr: TokenStream2, func: ItemFn) -> syn::Result<TokenStream2> {
    let args = parse_args(attr)?;
    let broker = choose_broker(&args)?;

    // Validate with the capability table, pointing at the argument to blame.
    for arg in &args {
        if brook_caps::argument(broker, &arg.name).is_none() {
            let e = brook_caps::unknown_argument(broker, &arg.name);
            return Err(syn::Error::new(arg.name_span, e.message));
        }
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

    let handler_args = check_signature(&func, broker, resolved.policy, span_of("ack_policy"))?;

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
    let broker_variant = format_ident!("{}", kind_type(broker));
    let arg_values = args.iter().map(|a| {
        let n = &a.name;
        let v = value_tokens(&a.value);
        quote!((#n, #v))
    });
    let extracted: Vec<_> = (0..handler_args.len())
        .map(|i| format_ident!("arg{}", i))
        .collect();
    let extractions = handler_args.iter().zip(&extracted).map(|(ty, var)| {
        quote_spanned! {ty.span()=>
            let #var = (&&::brook::__private::Arg::<#ty>::new()).extract(msg, ctx)?;
        }
    });
    let warning = resolved.warning.map(|text| {
        let span = span_of("ack_policy").unwrap_or_else(Span::call_site);
        let note = format!("brook: {text}");
        let use_site = quote_spanned!(span=> ack_policy_degraded);
        quote! {
            const _: () = {
                #[deprecated(note = #note)]
                #[allow(non_upper_case_globals)]
                const ack_policy_degraded: () = ();
                #use_site
            };
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

            fn subscription(&self) -> ::std::result::Result<::brook::Subscription, ::brook::SubscriptionError> {
                ::brook::Subscription::from_macro(::brook::BrokerKind::#broker_variant, #name_str, &[#(#arg_values),*])
            }

            async fn call(&self, msg: &::brook::Message, ctx: &::brook::Context) -> ::std::result::Result<(), ::brook::HandlerError> {
                #[allow(unused_imports)]
                use ::brook::__private::{ViaDecode as _, ViaFromMessage as _};
                #(#extractions)*
                ::brook::IntoHandlerResult::into_handler_result(Self::handle(#(#extracted),*).await)
            }
        }

        #warning
    })
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

fn value_tokens(value: &Value) -> TokenStream2 {
    match value {
        Value::Str(s) => {
            let s = s.as_ref();
            quote!(::brook::__private::Value::Str(::brook::__private::Cow::Borrowed(#s)))
        }
        Value::Ident(s) => {
            let s = s.as_ref();
            quote!(::brook::__private::Value::Ident(::brook::__private::Cow::Borrowed(#s)))
        }
        Value::Int(i) => quote!(::brook::__private::Value::Int(#i)),
        Value::Bool(b) => quote!(::brook::__private::Value::Bool(#b)),
    }
}

/// Checks the handler's signature; returns the argument types in order.
fn check_signature(
    func: &ItemFn,
    broker: BrokerKind,
    policy: AckPolicy,
    policy_span: Option<Span>,
) -> syn::Result<Vec<Type>> {
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
    let mut types = Vec::new();
    let mut settles = false;
    for input in &sig.inputs {
        let ty = match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "a #[subscriber] fn cannot take `self`; use `State<T>` for shared state",
                ))
            }
            FnArg::Typed(t) => &*t.ty,
        };
        if let Some((other, type_name)) = broker_message_type(ty) {
            if other != broker {
                let instead = match broker.message_type() {
                    Some(own) => format!("`&Message` or `&{own}`"),
                    None => "`&Message`".to_owned(),
                };
                return Err(syn::Error::new(
                    last_ident_span(ty),
                    format!(
                        "`{type_name}` is {}'s message type, but this subscriber is for {} (broker = {}); take {instead} instead",
                        other.display_name(),
                        broker.display_name(),
                        broker.name()
                    ),
                ));
            }
            settles = true;
        }
        if is_message_ref(ty) {
            settles = true;
        }
        types.push(ty.clone());
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
    Ok(types)
}

fn last_ident(ty: &Type) -> Option<String> {
    let ty = match ty {
        Type::Reference(r) => &*r.elem,
        other => other,
    };
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn last_ident_span(ty: &Type) -> Span {
    let inner = match ty {
        Type::Reference(r) => &*r.elem,
        other => other,
    };
    match inner {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .map_or_else(|| ty.span(), |s| s.ident.span()),
        _ => ty.span(),
    }
}

fn is_message_ref(ty: &Type) -> bool {
    matches!(ty, Type::Reference(_)) && last_ident(ty).as_deref() == Some("Message")
}

fn broker_message_type(ty: &Type) -> Option<(BrokerKind, String)> {
    let name = last_ident(ty)?;
    BrokerKind::ALL
        .into_iter()
        .find(|b| b.message_type() == Some(name.as_str()))
        .map(|b| (b, name))
}
