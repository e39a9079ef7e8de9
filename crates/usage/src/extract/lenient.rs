//! Lenient, borrowed serde types for reading backend bodies in one pass.
//!
//! Each protocol module declares `#[derive(Deserialize)]` structs holding only
//! the fields it reads, built from the types here. Every one of them accepts
//! any JSON value: a value of an unexpected type becomes "absent" (and is
//! skipped without allocating), so a wrong-typed field costs that field only,
//! never the whole body. Strings borrow from the input unless they contain
//! escapes. Unknown keys are skipped ([`IgnoredAny`] under the hood).
//!
//! The only data errors left are the derive's own (a duplicate key); [`parse`]
//! answers those by reading the text through [`Value`] once (which keeps the
//! last duplicate, as the old `Value` readers did) and parsing again.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Parses `bytes` as `T`; on a data error (duplicate keys) retries through
/// [`Value`], re-serialized into `scratch`. `None` when it is not JSON.
pub(crate) fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], scratch: &'a mut String) -> Option<T> {
    // Checked once here, strings need no UTF-8 check each.
    if let Ok(text) = std::str::from_utf8(bytes) {
        return parse_str(text, scratch);
    }
    match serde_json::from_slice::<T>(bytes) {
        Ok(value) => Some(value),
        Err(error) if error.is_data() => {
            let value = serde_json::from_slice::<Value>(bytes).ok()?;
            *scratch = value.to_string();
            let text: &'a String = scratch;
            serde_json::from_str(text).ok()
        }
        Err(_) => None,
    }
}

/// [`parse`] of a text.
pub(crate) fn parse_str<'a, T: Deserialize<'a>>(
    text: &'a str,
    scratch: &'a mut String,
) -> Option<T> {
    match serde_json::from_str::<T>(text) {
        Ok(value) => Some(value),
        Err(error) if error.is_data() => {
            let value = serde_json::from_str::<Value>(text).ok()?;
            *scratch = value.to_string();
            let text: &'a String = scratch;
            serde_json::from_str(text).ok()
        }
        Err(_) => None,
    }
}

/// Implements, for a visitor, the listed `visit_*` methods of the values it
/// does not read (`bool i64 u64 f64 str unit seq map`): the value is
/// consumed and `$absent` returned.
macro_rules! skip_visits {
    ($absent:expr; $($kind:ident)*) => { $( skip_visits!(@ $kind $absent); )* };
    (@ bool $absent:expr) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($absent)
        }
    };
    (@ i64 $absent:expr) => {
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($absent)
        }
    };
    (@ u64 $absent:expr) => {
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($absent)
        }
    };
    (@ f64 $absent:expr) => {
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($absent)
        }
    };
    (@ str $absent:expr) => {
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($absent)
        }
    };
    (@ unit $absent:expr) => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }
    };
    (@ seq $absent:expr) => {
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            serde::de::Visitor::visit_seq(serde::de::IgnoredAny, seq)?;
            Ok($absent)
        }
    };
    (@ map $absent:expr) => {
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            serde::de::Visitor::visit_map(serde::de::IgnoredAny, map)?;
            Ok($absent)
        }
    };
}
pub(crate) use skip_visits;

/// Implements `visit_borrowed_str` and `visit_str` of a visitor: the string,
/// borrowed when it can be, wrapped by `$wrap` (a `Cow<str>` → value function).
macro_rules! text_visits {
    ($wrap:expr) => {
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(($wrap)(std::borrow::Cow::Borrowed(v)))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(($wrap)(std::borrow::Cow::Owned(v.to_owned())))
        }
    };
}
pub(crate) use text_visits;

/// A field read as a string: absent, present but not a string (null
/// included), or the string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) enum Str<'a> {
    #[default]
    Absent,
    NotText,
    Text(Cow<'a, str>),
}

impl<'a> Str<'a> {
    /// The string, empty included (`Value::as_str`).
    pub(crate) fn get(&self) -> Option<&str> {
        match self {
            Str::Text(text) => Some(text),
            _ => None,
        }
    }

    /// A non-empty string.
    pub(crate) fn nonempty(&self) -> Option<&str> {
        self.get().filter(|s| !s.is_empty())
    }

    /// The key is present, whatever its value (`Value::get(..).is_some()`).
    pub(crate) fn is_present(&self) -> bool {
        !matches!(self, Str::Absent)
    }

    /// The string, owned or borrowed as read.
    pub(crate) fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Str::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            text_visits!(Str::Text);
            skip_visits!(Str::NotText; bool i64 u64 f64 unit seq map);
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// A field read as a number: absent, null, a number, a numeric string, or
/// anything else. (16 bytes: these are moved around inside big structs.)
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    #[default]
    Absent,
    Null,
    U64(u64),
    /// A negative integer.
    I64(i64),
    F64(f64),
    /// A string that parses as a `u64` (and so also as the `f64` `n as f64`).
    TextInteger(u64),
    /// A string that parses as an `f64` but not as a `u64`.
    TextFloat(f64),
    Other,
}

impl Num {
    /// Present and not null.
    pub(crate) fn is_set(&self) -> bool {
        !matches!(self, Num::Absent | Num::Null)
    }

    /// A token count: a non-negative integer, an integral float, or a numeric string.
    pub(crate) fn count(&self) -> Option<u64> {
        match *self {
            Num::U64(n) | Num::TextInteger(n) => Some(n),
            Num::F64(f) => {
                (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1.0e19).then_some(f as u64)
            }
            _ => None,
        }
    }

    /// A cost: a finite non-negative number or numeric string.
    pub(crate) fn money(&self) -> Option<f64> {
        let f = match *self {
            Num::U64(n) | Num::TextInteger(n) => n as f64,
            Num::I64(n) => n as f64,
            Num::F64(f) | Num::TextFloat(f) => f,
            _ => return None,
        };
        (f.is_finite() && f >= 0.0).then_some(f)
    }

    /// An unsigned integer (an `index`): integers only (`Value::as_u64`).
    pub(crate) fn index(&self) -> Option<u64> {
        match *self {
            Num::U64(n) => Some(n),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num::U64(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(u64::try_from(v).map_or(Num::I64(v), Num::U64))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num::F64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Num, E> {
                let v = v.trim();
                Ok(match (v.parse(), v.parse()) {
                    (Ok(n), _) => Num::TextInteger(n),
                    (Err(_), Ok(f)) => Num::TextFloat(f),
                    (Err(_), Err(_)) => Num::Other,
                })
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Num, E> {
                Ok(Num::Null)
            }
            skip_visits!(Num::Other; bool seq map);
        }
        deserializer.deserialize_any(V)
    }
}

/// A field read as an object of shape `T`: absent, null, present but not an
/// object, or the object.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) enum Field<T> {
    #[default]
    Absent,
    Null,
    NotObject,
    Object(T),
}

impl<T> Field<T> {
    /// The key is present, whatever its value (`Value::get(..).is_some()`).
    pub(crate) fn is_present(&self) -> bool {
        !matches!(self, Field::Absent)
    }

    /// Present and not null.
    pub(crate) fn is_set(&self) -> bool {
        !matches!(self, Field::Absent | Field::Null)
    }

    /// The object, if it is one.
    pub(crate) fn object(&self) -> Option<&T> {
        match self {
            Field::Object(object) => Some(object),
            _ => None,
        }
    }

    /// The object, if it is one.
    pub(crate) fn into_object(self) -> Option<T> {
        match self {
            Field::Object(object) => Some(object),
            _ => None,
        }
    }
}

impl<T: Default> Field<T> {
    /// The object, or an empty one (reading a non-object finds no key).
    pub(crate) fn into_object_or_default(self) -> T {
        self.into_object().unwrap_or_default()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Field<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Field::Object)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Field<T>, E> {
                Ok(Field::Null)
            }
            skip_visits!(Field::NotObject; bool i64 u64 f64 str seq);
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// A field read as an array of objects of shape `T`: empty unless it is an
/// array; an element that is not an object reads as `T::default()` (so
/// positions are kept).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct List<T>(pub(crate) Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element::<Field<T>>()? {
                    items.push(item.into_object_or_default());
                }
                Ok(List(items))
            }
            skip_visits!(List(Vec::new()); bool i64 u64 f64 str unit map);
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// A content part (OpenAI chat content, Responses content and summaries).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PartIn<'a> {
    #[serde(borrow)]
    pub(crate) text: Str<'a>,
    #[serde(borrow)]
    pub(crate) refusal: Str<'a>,
}

impl<'a> PartIn<'a> {
    /// The `text` string, else the `refusal` string (OpenAI chat).
    pub(crate) fn into_text_or_refusal(self) -> Option<Cow<'a, str>> {
        match self.text {
            Str::Text(text) => Some(text),
            _ => self.refusal.into_text(),
        }
    }

    /// `text`, or `refusal` when there is no `text` key at all (Responses).
    pub(crate) fn text_unless_refusal(&self) -> Option<&str> {
        if self.text.is_present() {
            self.text.get()
        } else {
            self.refusal.get()
        }
    }
}

/// A field whose JSON text is needed (arguments objects, error values): kept
/// as a [`Value`], built only when the field is there.
pub(crate) type Json = Option<Value>;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Probe<'a> {
        #[serde(borrow)]
        s: Str<'a>,
        n: Num,
        #[serde(borrow)]
        o: Field<Inner<'a>>,
        #[serde(borrow)]
        l: List<Inner<'a>>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner<'a> {
        #[serde(borrow)]
        s: Str<'a>,
    }

    fn probe(text: &str) -> Option<Probe<'static>> {
        let text: &'static str = Box::leak(text.to_owned().into_boxed_str());
        let scratch: &'static mut String = Box::leak(Box::default());
        parse(text.as_bytes(), scratch)
    }

    fn num(json: &str) -> Num {
        probe(&format!(r#"{{"n": {json}}}"#)).unwrap().n
    }

    #[test]
    fn counts_are_forgiving() {
        assert_eq!(num("12").count(), Some(12));
        assert_eq!(num("12.0").count(), Some(12));
        assert_eq!(num(r#"" 12 ""#).count(), Some(12));
        assert_eq!(num("-1").count(), None);
        assert_eq!(num("1.5").count(), None);
        assert_eq!(num("1e30").count(), None);
        assert_eq!(num("123456789012345678901234567890").count(), None);
        assert_eq!(num("null").count(), None);
        assert_eq!(num("true").count(), None);
        assert_eq!(num("[1]").count(), None);
        assert_eq!(num("{}").count(), None);
        assert_eq!(Num::Absent.count(), None);
        assert_eq!(num("0.00123").money(), Some(0.00123));
        assert_eq!(num(r#""0.5""#).money(), Some(0.5));
        assert_eq!(num("-0.5").money(), None);
        assert_eq!(num(r#""NaN""#).money(), None);
        assert_eq!(num(r#""x""#).money(), None);
        assert_eq!(num(r#""1.5""#).count(), None);
        assert_eq!(num(r#""1.5""#).money(), Some(1.5));
        assert_eq!(num(r#""18446744073709551615""#).count(), Some(u64::MAX));
        assert_eq!(
            num(r#""18446744073709551615""#).money(),
            Some(u64::MAX as f64)
        );
        assert_eq!(std::mem::size_of::<Num>(), 16);
        assert_eq!(num("3").index(), Some(3));
        assert_eq!(num("3.0").index(), None);
        assert_eq!(num(r#""3""#).index(), None);
        assert!(!num("null").is_set() && num("[]").is_set());
    }

    #[test]
    fn wrong_types_are_absent_not_errors() {
        let p = probe(r#"{"s": 5, "o": "x", "l": {"s": "a"}, "n": {"deep": [[[]]]}}"#).unwrap();
        assert_eq!(p.s, Str::NotText);
        assert_eq!(p.o, Field::NotObject);
        assert!(p.l.0.is_empty());
        assert_eq!(p.n, Num::Other);
        let p =
            probe(r#"{"o": null, "l": [1, {"s": "a"}, null, {"s": 2}], "x": {"y": 1}}"#).unwrap();
        assert_eq!(p.o, Field::Null);
        assert!(p.o.is_present() && !p.o.is_set());
        let strings: Vec<_> = p.l.0.iter().map(|i| i.s.get()).collect();
        assert_eq!(strings, [None, Some("a"), None, None]);
        assert!(!p.s.is_present());
        // Not an object at the top: nothing, not an error.
        let top: Field<Inner<'_>> = serde_json::from_str("[1, 2]").unwrap();
        assert_eq!(top, Field::NotObject);
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let p = probe(r#"{"s": "plain", "o": {"s": "a\nb"}}"#).unwrap();
        assert!(matches!(p.s, Str::Text(Cow::Borrowed("plain"))));
        assert_eq!(p.o.object().unwrap().s.get(), Some("a\nb"));
    }

    #[test]
    fn duplicate_keys_keep_the_last_and_garbage_is_none() {
        let p = probe(r#"{"s": "first", "s": "last", "o": {"s": 1, "s": "x"}}"#).unwrap();
        assert_eq!(p.s.get(), Some("last"));
        assert_eq!(p.o.object().unwrap().s.get(), Some("x"));
        assert!(probe(r#"{"s": "x""#).is_none());
        assert!(probe("not json").is_none());
        // A `Value` reads the same way.
        let value = json!({"s": "v", "n": 4});
        let p = Probe::deserialize(&value).unwrap();
        assert_eq!((p.s.get(), p.n.count()), (Some("v"), Some(4)));
    }
}
