//! Request JSON read into types that keep only what a request uses: strings and numbers are kept, any other value is known only by its kind and skipped as it is parsed, never built (a `serde_json::Value` of a long array costs tens of bytes per element).
//!
//! The handlers decide what is wrong with a field, in their own words; these types only
//! say what was there.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A field that should be a string.
#[derive(Debug, Default, PartialEq)]
pub enum Text {
    /// Absent, or `null`.
    #[default]
    Null,
    Str(String),
    /// Any other kind of value.
    Other,
}

/// A field that should be true or false.
#[derive(Debug, Default, PartialEq)]
pub enum Flag {
    #[default]
    Null,
    Bool(bool),
    Other,
}

/// A field that should be a number.
#[derive(Debug, Default, PartialEq)]
pub enum Number {
    #[default]
    Null,
    /// A whole number that is not negative, as written.
    Whole(u64),
    /// Any other number.
    Num(f64),
    Other,
}

/// A field that should be an array of strings.
#[derive(Debug, Default, PartialEq)]
pub enum Strings {
    #[default]
    Null,
    List(Vec<String>),
    /// Not an array, or an array with something other than strings in it.
    Other,
}

/// A field that should be an array of objects, read as `T` each.
#[derive(Debug, Default, PartialEq)]
pub enum Objects<T> {
    #[default]
    Null,
    List(Vec<Item<T>>),
    Other,
}

/// One element of an array of objects.
#[derive(Debug, PartialEq)]
pub enum Item<T> {
    Object(T),
    NotObject,
}

/// Skips the rest of an array or object without building it.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Every visit that is not the kind wanted gives `$other`, skipping what it holds.
macro_rules! other_kinds {
    ($other:expr; $($method:ident($ty:ty)),*) => {
        $(fn $method<E: de::Error>(self, _: $ty) -> Result<Self::Value, E> {
            Ok($other)
        })*
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            drain_seq(seq)?;
            Ok($other)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            drain_map(map)?;
            Ok($other)
        }
    };
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text, E> {
                Ok(Text::Str(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Text, E> {
                Ok(Text::Str(s))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text::Null)
            }
            other_kinds!(Text::Other; visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64));
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flag, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Flag, E> {
                Ok(Flag::Bool(b))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Flag, E> {
                Ok(Flag::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Flag, E> {
                Ok(Flag::Null)
            }
            other_kinds!(Flag::Other; visit_str(&str), visit_i64(i64), visit_u64(u64), visit_f64(f64));
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Number, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Number, E> {
                Ok(Number::Num(n as f64))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Number, E> {
                Ok(Number::Whole(n))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Number, E> {
                Ok(Number::Num(n))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Number, E> {
                Ok(Number::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Number, E> {
                Ok(Number::Null)
            }
            other_kinds!(Number::Other; visit_bool(bool), visit_str(&str));
        }
        d.deserialize_any(V)
    }
}

impl Number {
    /// The number as an f64 (large whole numbers rounded, as JSON readers do).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Number::Whole(n) => Some(n as f64),
            Number::Num(n) => Some(n),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strings, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Strings, E> {
                Ok(Strings::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Strings, E> {
                Ok(Strings::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strings, A::Error> {
                let mut list = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    match item {
                        Text::Str(s) => list.push(s),
                        _ => {
                            drain_seq(seq)?;
                            return Ok(Strings::Other);
                        }
                    }
                }
                Ok(Strings::List(list))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Strings, A::Error> {
                drain_map(map)?;
                Ok(Strings::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strings, E> {
                Ok(Strings::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strings, E> {
                Ok(Strings::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strings, E> {
                Ok(Strings::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strings, E> {
                Ok(Strings::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Strings, E> {
                Ok(Strings::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// What an object's visitor gives for one object (with `Item::Object`) or for another
/// kind of value (`Item::NotObject`).
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Item<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Item<T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Item<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Item::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item<T>, A::Error> {
                drain_seq(seq)?;
                Ok(Item::NotObject)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Item<T>, E> {
                Ok(Item::NotObject)
            }
            fn visit_none<E: de::Error>(self) -> Result<Item<T>, E> {
                Ok(Item::NotObject)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Item<T>, E> {
                Ok(Item::NotObject)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Item<T>, E> {
                Ok(Item::NotObject)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Item<T>, E> {
                Ok(Item::NotObject)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Item<T>, E> {
                Ok(Item::NotObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Item<T>, E> {
                Ok(Item::NotObject)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Objects<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Objects<T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Objects<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Objects<T>, A::Error> {
                let mut list = Vec::new();
                while let Some(item) = seq.next_element::<Item<T>>()? {
                    list.push(item);
                }
                Ok(Objects::List(list))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Objects<T>, E> {
                Ok(Objects::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Objects<T>, E> {
                Ok(Objects::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Objects<T>, A::Error> {
                drain_map(map)?;
                Ok(Objects::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Objects<T>, E> {
                Ok(Objects::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Objects<T>, E> {
                Ok(Objects::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Objects<T>, E> {
                Ok(Objects::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Objects<T>, E> {
                Ok(Objects::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Objects<T>, E> {
                Ok(Objects::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A request body: an object read as `T`, or something else.
pub enum Body<T> {
    Object(T),
    NotObject,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Body<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Body<T>, D::Error> {
        Item::<T>::deserialize(d).map(|item| match item {
            Item::Object(t) => Body::Object(t),
            Item::NotObject => Body::NotObject,
        })
    }
}

/// The first key of an object that is not one of `known`, skipped without being built;
/// for types that refuse unknown fields with a message of their own.
#[derive(Debug, Default, PartialEq)]
pub struct Unknown(pub Option<String>);

impl Unknown {
    pub fn note(&mut self, key: &str) {
        if self.0.is_none() {
            self.0 = Some(key.to_string());
        }
    }
}
