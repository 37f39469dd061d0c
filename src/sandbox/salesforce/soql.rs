//! A SOQL parser and evaluator for the subset sync tools and common clients send
//! (parent fields one level up, `Owner.Name`, in SELECT and WHERE):
//! `SELECT f, ... | COUNT() FROM Object [WHERE ...] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
//! [LIMIT n] [OFFSET n]`, with AND/OR/NOT and parentheses, `= != <> < <= > >=`, `IN (...)`,
//! `NOT IN (...)`, `LIKE`, unquoted date and datetime literals, the date literals `TODAY`,
//! `YESTERDAY`, `LAST_N_DAYS:n`, and the vendor's string escapes.
//!
//! Errors come back as the vendor's `MALFORMED_QUERY` / `INVALID_FIELD` / `INVALID_TYPE`
//! with the "ERROR at Row:r:Column:c" message. Field and object names resolve through the
//! schema case-insensitively. It must not know about paging or HTTP.
//!
//! # Size limits
//! The vendor's documented limits hold here whatever carries the statement (a GET `q`, a
//! Composite subrequest `url`, a Bulk API 2.0 job): at most [`MAX_STATEMENT_CHARS`]
//! characters per statement and [`MAX_LITERAL_CHARS`] per string literal (the vendor states
//! the latter for WHERE clauses, the only place our subset has literals). The docs name no
//! error code for either, so both answer `MALFORMED_QUERY` with a message saying which limit
//! was passed.

use jiff::Timestamp;
use serde_json::Value;

use super::schema::{FieldType, ObjectSchema, SCHEMA};
use super::store::{Record, Store, format_datetime};

/// The longest SOQL statement the vendor accepts, in characters (its default limit).
pub const MAX_STATEMENT_CHARS: usize = 100_000;

/// The longest string literal the vendor accepts in a WHERE clause, in characters.
pub const MAX_LITERAL_CHARS: usize = 4_000;

/// A query the vendor would refuse, with its errorCode.
#[derive(Debug, Clone, PartialEq)]
pub struct SoqlError {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Query {
    pub object: &'static ObjectSchema,
    /// Canonical names of the selected fields of the object itself, in SELECT order.
    pub fields: Vec<&'static str>,
    /// Every selected column in SELECT order, parent fields included. Empty for `COUNT()`.
    pub select: Vec<Selected>,
    pub count_only: bool,
    pub filter: Option<Cond>,
    pub order: Vec<OrderItem>,
    pub limit: Option<usize>,
    pub offset: usize,
}

/// One SELECT column: a field of the object, or one field of a parent reached through a
/// reference (`Owner.Name`, `Lead__r.Email`; one level).
#[derive(Debug, Clone)]
pub enum Selected {
    Field(&'static str),
    Parent {
        /// Canonical relationship name, the key of the nested object (`Owner`, `Lead__r`).
        relationship: String,
        /// The reference field followed (`OwnerId`, `Lead__c`).
        reference: &'static str,
        object: &'static ObjectSchema,
        field: &'static str,
    },
}

impl Selected {
    /// The column name, as Bulk API CSV headers show it.
    pub fn column(&self) -> String {
        match self {
            Selected::Field(f) => f.to_string(),
            Selected::Parent {
                relationship,
                field,
                ..
            } => format!("{relationship}.{field}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OrderItem {
    pub field: &'static str,
    pub ty: FieldType,
    pub descending: bool,
    pub nulls_last: bool,
}

/// A condition on a parent's field (`Owner.IsActive = true`): the reference followed.
#[derive(Debug, Clone, Copy)]
pub struct Via {
    pub reference: &'static str,
    pub object: &'static ObjectSchema,
}

#[derive(Debug, Clone)]
pub enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Cmp {
        field: &'static str,
        via: Option<Via>,
        ty: FieldType,
        op: Op,
        value: Lit,
    },
    In {
        field: &'static str,
        via: Option<Via>,
        ty: FieldType,
        values: Vec<Lit>,
        negated: bool,
    },
    Like {
        field: &'static str,
        via: Option<Via>,
        /// Lower-cased pattern, `%`/`_` wildcards already unescaped into tokens.
        pattern: Vec<LikeToken>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum LikeToken {
    Char(char),
    Any,
    One,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal bound to its field's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    /// Text (lower-cased for text fields), ids, or the wire encoding of a date/datetime.
    Str(String),
    /// A date literal such as `TODAY` on a datetime field: [start, end).
    Range(String, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    /// `2024-01-01` or `2024-01-01T00:00:00Z` (unquoted).
    Temporal(String),
    Punct(&'static str),
    End,
}

struct Lexed {
    tok: Tok,
    pos: usize,
}

fn lex(src: &str) -> Result<Vec<Lexed>, (usize, String)> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '\'' {
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&c) = chars.get(i) else {
                    return Err((start, "unterminated string".into()));
                };
                i += 1;
                match c {
                    '\'' => break,
                    '\\' => {
                        let Some(&e) = chars.get(i) else {
                            return Err((i, "unterminated string".into()));
                        };
                        i += 1;
                        match e {
                            'n' | 'N' => s.push('\n'),
                            'r' | 'R' => s.push('\r'),
                            't' | 'T' => s.push('\t'),
                            'b' | 'B' => s.push('\u{8}'),
                            'f' | 'F' => s.push('\u{c}'),
                            '"' | '\'' | '\\' => s.push(e),
                            // Kept escaped: only LIKE gives them meaning.
                            '_' | '%' => {
                                s.push('\\');
                                s.push(e);
                            }
                            'u' => {
                                let hex: String =
                                    chars.get(i..i + 4).unwrap_or(&[]).iter().collect();
                                let code = u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .and_then(char::from_u32)
                                    .ok_or((i, format!("Invalid unicode escape: \\u{hex}")))?;
                                s.push(code);
                                i += 4;
                            }
                            other => {
                                return Err((
                                    i - 2,
                                    format!(
                                        "Invalid string literal '\\{other}'. Illegal character sequence '\\{other}' in string literal."
                                    ),
                                ));
                            }
                        }
                    }
                    c => s.push(c),
                }
            }
            let len = s.chars().count();
            if len > MAX_LITERAL_CHARS {
                return Err((
                    start,
                    format!(
                        "String literal of {len} characters is longer than the {MAX_LITERAL_CHARS} characters a string in a WHERE clause may have"
                    ),
                ));
            }
            out.push(Lexed {
                tok: Tok::Str(s),
                pos: start,
            });
            continue;
        }
        if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let temporal = chars
                .get(i..i + 5)
                .is_some_and(|w| w[..4].iter().all(|d| d.is_ascii_digit()) && w[4] == '-');
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || chars[i] == '.'
                    || (temporal
                        && (chars[i].is_ascii_alphanumeric()
                            || matches!(chars[i], ':' | '+' | '-'))))
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let tok = if temporal {
                Tok::Temporal(text)
            } else {
                Tok::Num(text)
            };
            out.push(Lexed { tok, pos: start });
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.')) {
                i += 1;
            }
            out.push(Lexed {
                tok: Tok::Ident(chars[start..i].iter().collect()),
                pos: start,
            });
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let punct = match two.as_str() {
            "!=" => Some("!="),
            "<>" => Some("<>"),
            "<=" => Some("<="),
            ">=" => Some(">="),
            _ => None,
        };
        if let Some(p) = punct {
            out.push(Lexed {
                tok: Tok::Punct(p),
                pos: start,
            });
            i += 2;
            continue;
        }
        let one = match c {
            '(' => "(",
            ')' => ")",
            ',' => ",",
            '=' => "=",
            '<' => "<",
            '>' => ">",
            ':' => ":",
            _ => return Err((start, format!("unexpected token: '{c}'"))),
        };
        out.push(Lexed {
            tok: Tok::Punct(one),
            pos: start,
        });
        i += 1;
    }
    out.push(Lexed {
        tok: Tok::End,
        pos: chars.len(),
    });
    Ok(out)
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Lexed>,
    at: usize,
    now: Timestamp,
    object: Option<&'static ObjectSchema>,
}

/// Parses `src`; `now` resolves relative date literals such as `TODAY`.
pub fn parse(src: &str, now: Timestamp) -> Result<Query, SoqlError> {
    if src.trim().is_empty() {
        return Err(SoqlError {
            code: "MALFORMED_QUERY",
            message: "SOQL statements cannot be empty or null".into(),
        });
    }
    let len = src.chars().count();
    if len > MAX_STATEMENT_CHARS {
        return Err(SoqlError {
            code: "MALFORMED_QUERY",
            message: format!(
                "SOQL statement of {len} characters is longer than the {MAX_STATEMENT_CHARS} characters a statement may have"
            ),
        });
    }
    let toks = lex(src).map_err(|(pos, msg)| located(src, pos, "MALFORMED_QUERY", &msg))?;
    let mut p = Parser {
        src,
        toks,
        at: 0,
        now,
        object: None,
    };
    p.query()
}

fn located(src: &str, pos: usize, code: &'static str, msg: &str) -> SoqlError {
    let before: String = src.chars().take(pos).collect();
    let row = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let line = src.lines().nth(row - 1).unwrap_or("");
    SoqlError {
        code,
        message: format!(
            "\n{line}\n{}^\nERROR at Row:{row}:Column:{col}\n{msg}",
            " ".repeat(col - 1)
        ),
    }
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].tok
    }
    fn pos(&self) -> usize {
        self.toks[self.at].pos
    }
    fn next(&mut self) -> Tok {
        let t = self.toks[self.at].tok.clone();
        if t != Tok::End {
            self.at += 1;
        }
        t
    }
    fn unexpected(&self) -> SoqlError {
        let shown = match self.peek() {
            Tok::Ident(s) | Tok::Num(s) | Tok::Temporal(s) => s.clone(),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Punct(p) => p.to_string(),
            Tok::End => "<EOF>".into(),
        };
        located(
            self.src,
            self.pos(),
            "MALFORMED_QUERY",
            &format!("unexpected token: '{shown}'"),
        )
    }
    fn keyword(&mut self, kw: &str) -> bool {
        if let Tok::Ident(s) = self.peek()
            && s.eq_ignore_ascii_case(kw)
        {
            self.next();
            return true;
        }
        false
    }
    fn expect_keyword(&mut self, kw: &str) -> Result<(), SoqlError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }
    fn punct(&mut self, p: &str) -> bool {
        if let Tok::Punct(q) = self.peek()
            && *q == p
        {
            self.next();
            return true;
        }
        false
    }
    fn expect_punct(&mut self, p: &str) -> Result<(), SoqlError> {
        if self.punct(p) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn query(&mut self) -> Result<Query, SoqlError> {
        self.expect_keyword("SELECT")?;
        let mut names = Vec::new();
        let mut count_only = false;
        if let Tok::Ident(s) = self.peek()
            && s.eq_ignore_ascii_case("COUNT")
            && self.toks.get(self.at + 1).map(|t| &t.tok) == Some(&Tok::Punct("("))
        {
            self.next();
            self.expect_punct("(")?;
            self.expect_punct(")")?;
            count_only = true;
        } else {
            loop {
                let pos = self.pos();
                match self.next() {
                    Tok::Ident(name) if !is_reserved(&name) => names.push((name, pos)),
                    _ => {
                        self.at -= 1;
                        return Err(self.unexpected());
                    }
                }
                if !self.punct(",") {
                    break;
                }
            }
        }
        self.expect_keyword("FROM")?;
        let object_pos = self.pos();
        let Tok::Ident(object_name) = self.next() else {
            self.at -= 1;
            return Err(self.unexpected());
        };
        let object = SCHEMA.object(&object_name).ok_or_else(|| {
            located(
                self.src,
                object_pos,
                "INVALID_TYPE",
                &format!(
                    "sObject type '{object_name}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names."
                ),
            )
        })?;
        self.object = Some(object);
        let mut fields = Vec::new();
        let mut select = Vec::new();
        for (name, pos) in names {
            if let Some((relationship, parent_field)) = name.split_once('.') {
                let parent = self.parent(relationship, parent_field, pos)?;
                if !select
                    .iter()
                    .any(|s: &Selected| s.column() == parent.column())
                {
                    select.push(parent);
                }
                continue;
            }
            let field = self.field(&name, pos)?;
            if !fields.contains(&field.0) {
                fields.push(field.0);
                select.push(Selected::Field(field.0));
            }
        }
        let filter = if self.keyword("WHERE") {
            Some(self.or()?)
        } else {
            None
        };
        let mut order = Vec::new();
        if self.keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                let pos = self.pos();
                let Tok::Ident(name) = self.next() else {
                    self.at -= 1;
                    return Err(self.unexpected());
                };
                let (field, ty) = self.field(&name, pos)?;
                let descending = if self.keyword("DESC") {
                    true
                } else {
                    self.keyword("ASC");
                    false
                };
                let mut nulls_last = descending;
                if self.keyword("NULLS") {
                    nulls_last = if self.keyword("LAST") {
                        true
                    } else {
                        self.expect_keyword("FIRST")?;
                        false
                    };
                }
                order.push(OrderItem {
                    field,
                    ty,
                    descending,
                    nulls_last,
                });
                if !self.punct(",") {
                    break;
                }
            }
        }
        let mut limit = None;
        let mut offset = 0;
        if self.keyword("LIMIT") {
            limit = Some(self.integer()?);
        }
        if self.keyword("OFFSET") {
            offset = self.integer()?;
        }
        if *self.peek() != Tok::End {
            return Err(self.unexpected());
        }
        Ok(Query {
            object,
            fields,
            select,
            count_only,
            filter,
            order,
            limit,
            offset,
        })
    }

    fn integer(&mut self) -> Result<usize, SoqlError> {
        match self.next() {
            Tok::Num(n) => n.parse().map_err(|_| {
                self.at -= 1;
                self.unexpected()
            }),
            _ => {
                self.at -= 1;
                Err(self.unexpected())
            }
        }
    }

    fn field(&self, name: &str, pos: usize) -> Result<(&'static str, FieldType), SoqlError> {
        let object = self.object.expect("object parsed first");
        match object.field(name) {
            Some(f) => Ok((f.name, f.ty)),
            None => Err(located(
                self.src,
                pos,
                "INVALID_FIELD",
                &format!(
                    "No such column '{name}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                    object.name
                ),
            )),
        }
    }

    fn parent(&self, relationship: &str, field: &str, pos: usize) -> Result<Selected, SoqlError> {
        let object = self.object.expect("object parsed first");
        let reference = object.fields.iter().find(|f| {
            f.relationship_name()
                .is_some_and(|r| r.eq_ignore_ascii_case(relationship))
        });
        let not_understood = || {
            located(
                self.src,
                pos,
                "INVALID_FIELD",
                &format!(
                    "Didn't understand relationship '{relationship}' in field path. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names."
                ),
            )
        };
        let reference = reference.ok_or_else(not_understood)?;
        let parent = reference
            .reference_to
            .and_then(|to| SCHEMA.object(to))
            .ok_or_else(not_understood)?;
        if field.contains('.') {
            return Err(not_understood());
        }
        let parent_field = parent.field(field).ok_or_else(|| {
            located(
                self.src,
                pos,
                "INVALID_FIELD",
                &format!(
                    "No such column '{field}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                    parent.name
                ),
            )
        })?;
        Ok(Selected::Parent {
            relationship: reference.relationship_name().expect("a reference"),
            reference: reference.name,
            object: parent,
            field: parent_field.name,
        })
    }

    fn or(&mut self) -> Result<Cond, SoqlError> {
        let mut parts = vec![self.and()?];
        while self.keyword("OR") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Cond::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Cond, SoqlError> {
        let mut parts = vec![self.not()?];
        while self.keyword("AND") {
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Cond::And(parts)
        })
    }

    fn not(&mut self) -> Result<Cond, SoqlError> {
        if self.keyword("NOT") {
            return Ok(Cond::Not(Box::new(self.not()?)));
        }
        if self.punct("(") {
            let inner = self.or()?;
            self.expect_punct(")")?;
            return Ok(inner);
        }
        let pos = self.pos();
        let Tok::Ident(name) = self.next() else {
            self.at -= 1;
            return Err(self.unexpected());
        };
        let (field, ty, via) = match name.split_once('.') {
            Some((relationship, parent_field)) => {
                match self.parent(relationship, parent_field, pos)? {
                    Selected::Parent {
                        reference,
                        object,
                        field,
                        ..
                    } => {
                        let ty = object.field(field).expect("resolved").ty;
                        (field, ty, Some(Via { reference, object }))
                    }
                    Selected::Field(_) => unreachable!("parent() resolves parents"),
                }
            }
            None => {
                let (field, ty) = self.field(&name, pos)?;
                (field, ty, None)
            }
        };
        if self.keyword("LIKE") {
            let Tok::Str(pattern) = self.next() else {
                self.at -= 1;
                return Err(self.unexpected());
            };
            return Ok(Cond::Like {
                field,
                via,
                pattern: like_tokens(&pattern.to_lowercase()),
            });
        }
        let negated = self.keyword("NOT");
        if self.keyword("IN") {
            self.expect_punct("(")?;
            let mut values = Vec::new();
            loop {
                values.push(self.literal(field, ty)?);
                if !self.punct(",") {
                    break;
                }
            }
            self.expect_punct(")")?;
            return Ok(Cond::In {
                field,
                via,
                ty,
                values,
                negated,
            });
        }
        if negated {
            return Err(self.unexpected());
        }
        let op = match self.next() {
            Tok::Punct("=") => Op::Eq,
            Tok::Punct("!=") | Tok::Punct("<>") => Op::Ne,
            Tok::Punct("<") => Op::Lt,
            Tok::Punct("<=") => Op::Le,
            Tok::Punct(">") => Op::Gt,
            Tok::Punct(">=") => Op::Ge,
            _ => {
                self.at -= 1;
                return Err(self.unexpected());
            }
        };
        let value = self.literal(field, ty)?;
        Ok(Cond::Cmp {
            field,
            via,
            ty,
            op,
            value,
        })
    }

    /// Reads a literal and binds it to the field's type, refusing the mismatches the vendor
    /// refuses (a quoted datetime, a date for a datetime, text for a number).
    fn literal(&mut self, field: &str, ty: FieldType) -> Result<Lit, SoqlError> {
        let pos = self.pos();
        let tok = self.next();
        let mismatch = |what: &str| {
            located(
                self.src,
                pos,
                "INVALID_FIELD",
                &format!(
                    "value of filter criterion for field '{field}' must be of type {what} and should not be enclosed in quotes"
                ),
            )
        };
        let type_name = match ty {
            FieldType::DateTime => "dateTime",
            FieldType::Date => "date",
            FieldType::Boolean => "boolean",
            FieldType::Double | FieldType::Currency => "double",
            _ => "string",
        };
        match tok {
            Tok::Ident(word) if word.eq_ignore_ascii_case("null") => Ok(Lit::Null),
            Tok::Ident(word)
                if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") =>
            {
                if ty == FieldType::Boolean {
                    Ok(Lit::Bool(word.eq_ignore_ascii_case("true")))
                } else {
                    Err(mismatch(type_name))
                }
            }
            Tok::Ident(word) if matches!(ty, FieldType::Date | FieldType::DateTime) => {
                let mut n = None;
                if self.punct(":") {
                    n = Some(self.integer()? as i64);
                }
                self.date_literal(&word, n, ty)
                    .ok_or_else(|| mismatch(type_name))
            }
            Tok::Str(s) => {
                if ty.is_text() {
                    Ok(Lit::Str(s.to_lowercase()))
                } else if ty.is_id() {
                    Ok(Lit::Str(s))
                } else {
                    Err(mismatch(type_name))
                }
            }
            Tok::Num(n) if ty.is_number() => {
                n.parse().map(Lit::Num).map_err(|_| mismatch(type_name))
            }
            Tok::Temporal(t) if ty == FieldType::DateTime && t.contains('T') => t
                .parse::<Timestamp>()
                .map(|ts| Lit::Str(format_datetime(ts)))
                .map_err(|_| {
                    located(
                        self.src,
                        pos,
                        "MALFORMED_QUERY",
                        &format!("line 1:{pos} no viable alternative at character '{t}'"),
                    )
                }),
            Tok::Temporal(t) if ty == FieldType::Date && t.len() == 10 => t
                .parse::<jiff::civil::Date>()
                .map(|d| Lit::Str(d.to_string()))
                .map_err(|_| mismatch(type_name)),
            Tok::End | Tok::Punct(_) => {
                self.at -= 1;
                Err(self.unexpected())
            }
            _ => Err(mismatch(type_name)),
        }
    }

    fn date_literal(&self, word: &str, n: Option<i64>, ty: FieldType) -> Option<Lit> {
        let today = self.now.to_zoned(jiff::tz::TimeZone::UTC).date();
        let day = |d: jiff::civil::Date| d;
        let (start, end) = match (word.to_ascii_uppercase().as_str(), n) {
            ("TODAY", None) => (day(today), today.tomorrow().ok()?),
            ("YESTERDAY", None) => (today.yesterday().ok()?, today),
            ("TOMORROW", None) => (
                today.tomorrow().ok()?,
                today.tomorrow().ok()?.tomorrow().ok()?,
            ),
            ("LAST_N_DAYS", Some(n)) => (
                today.checked_sub(jiff::Span::new().days(n)).ok()?,
                today.tomorrow().ok()?,
            ),
            ("NEXT_N_DAYS", Some(n)) => (
                today.tomorrow().ok()?,
                today.checked_add(jiff::Span::new().days(n + 1)).ok()?,
            ),
            _ => return None,
        };
        let encode = |d: jiff::civil::Date| match ty {
            FieldType::Date => Some(d.to_string()),
            _ => d
                .to_zoned(jiff::tz::TimeZone::UTC)
                .ok()
                .map(|z| format_datetime(z.timestamp())),
        };
        Some(Lit::Range(encode(start)?, encode(end)?))
    }
}

fn is_reserved(word: &str) -> bool {
    ["FROM", "WHERE", "SELECT", "ORDER", "LIMIT"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

fn like_tokens(pattern: &str) -> Vec<LikeToken> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(e) = chars.next() {
                    out.push(LikeToken::Char(e));
                }
            }
            '%' => out.push(LikeToken::Any),
            '_' => out.push(LikeToken::One),
            c => out.push(LikeToken::Char(c)),
        }
    }
    out
}

fn like_match(pattern: &[LikeToken], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((LikeToken::Any, rest)) => (0..=text.len()).any(|i| like_match(rest, &text[i..])),
        Some((LikeToken::One, rest)) => !text.is_empty() && like_match(rest, &text[1..]),
        Some((LikeToken::Char(c), rest)) => text.first() == Some(c) && like_match(rest, &text[1..]),
    }
}

/// Compares a stored value with a bound literal; `None` when either side is null.
fn compare(value: &Value, ty: FieldType, lit: &Lit) -> Option<std::cmp::Ordering> {
    match (value, lit) {
        (Value::Null, _) | (_, Lit::Null) => None,
        (Value::Bool(b), Lit::Bool(l)) => Some(b.cmp(l)),
        (Value::Number(n), Lit::Num(l)) => n.as_f64()?.partial_cmp(l),
        (Value::String(s), Lit::Str(l)) if ty.is_text() => Some(s.to_lowercase().cmp(l)),
        (Value::String(s), Lit::Str(l)) if ty.is_id() && l.len() == 15 => {
            Some(s.get(..15).unwrap_or(s).cmp(l.as_str()))
        }
        (Value::String(s), Lit::Str(l)) => Some(s.as_str().cmp(l.as_str())),
        (Value::Number(n), Lit::Str(l)) => Some(n.to_string().cmp(l)),
        (Value::Bool(b), Lit::Str(l)) => Some(b.to_string().cmp(l)),
        _ => None,
    }
}

/// The value a condition looks at: the record's own field, or its parent's through `via`
/// (null when the reference is empty or no store is given).
fn operand<'a>(
    record: &'a Record,
    field: &str,
    via: &Option<Via>,
    store: Option<&'a Store>,
) -> &'a Value {
    const NULL: &Value = &Value::Null;
    match via {
        None => record.get(field),
        Some(via) => record
            .get(via.reference)
            .as_str()
            .zip(store)
            .and_then(|(id, store)| store.live(via.object.name, id))
            .map_or(NULL, |parent| parent.get(field)),
    }
}

impl Cond {
    /// Whether `record` satisfies the condition; `store` resolves parent fields.
    pub fn matches(&self, record: &Record, store: Option<&Store>) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cond::And(parts) => parts.iter().all(|c| c.matches(record, store)),
            Cond::Or(parts) => parts.iter().any(|c| c.matches(record, store)),
            Cond::Not(inner) => !inner.matches(record, store),
            Cond::Cmp {
                field,
                via,
                ty,
                op,
                value,
            } => {
                let v = operand(record, field, via, store);
                if let Lit::Range(start, end) = value {
                    let Value::String(s) = v else { return false };
                    let s = s.as_str();
                    return match op {
                        Op::Eq => s >= start.as_str() && s < end.as_str(),
                        Op::Ne => !(s >= start.as_str() && s < end.as_str()),
                        Op::Lt => s < start.as_str(),
                        Op::Le => s < end.as_str(),
                        Op::Gt => s >= end.as_str(),
                        Op::Ge => s >= start.as_str(),
                    };
                }
                if *value == Lit::Null {
                    return match op {
                        Op::Eq => v.is_null(),
                        Op::Ne => !v.is_null(),
                        _ => false,
                    };
                }
                match (op, compare(v, *ty, value)) {
                    (Op::Ne, None) => !v.is_null() || *value != Lit::Null,
                    (_, None) => false,
                    (Op::Eq, Some(o)) => o == Equal,
                    (Op::Ne, Some(o)) => o != Equal,
                    (Op::Lt, Some(o)) => o == Less,
                    (Op::Le, Some(o)) => o != Greater,
                    (Op::Gt, Some(o)) => o == Greater,
                    (Op::Ge, Some(o)) => o != Less,
                }
            }
            Cond::In {
                field,
                via,
                ty,
                values,
                negated,
            } => {
                let v = operand(record, field, via, store);
                let found = values.iter().any(|lit| match lit {
                    Lit::Null => v.is_null(),
                    lit => compare(v, *ty, lit) == Some(Equal),
                });
                found != *negated
            }
            Cond::Like {
                field,
                via,
                pattern,
            } => match operand(record, field, via, store) {
                Value::String(s) => {
                    let text: Vec<char> = s.to_lowercase().chars().collect();
                    like_match(pattern, &text)
                }
                _ => false,
            },
        }
    }

    /// The strongest lower bound a top-level conjunct puts on `field` (`field > x` or
    /// `field >= x`), so that an index scan can start there.
    pub fn lower_bound(&self, field: &str) -> Option<String> {
        match self {
            Cond::Cmp {
                field: f,
                via: None,
                op: Op::Gt | Op::Ge | Op::Eq,
                value: Lit::Str(s),
                ..
            } if *f == field => Some(s.clone()),
            Cond::And(parts) => parts.iter().filter_map(|p| p.lower_bound(field)).max(),
            // Every branch must be bounded; the scan starts at the lowest bound.
            Cond::Or(parts) => parts
                .iter()
                .map(|p| p.lower_bound(field))
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .min(),
            _ => None,
        }
    }
}

/// Orders two records by the query's ORDER BY, then by Id (which the vendor does not
/// promise, but which makes pages deterministic).
pub fn order_records(order: &[OrderItem], a: &Record, b: &Record) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for item in order {
        let (x, y) = (a.get(item.field), b.get(item.field));
        let o = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => {
                if item.nulls_last {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (false, true) => {
                if item.nulls_last {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (false, false) => {
                let o = match (x, y) {
                    (Value::Number(m), Value::Number(n)) => m
                        .as_f64()
                        .partial_cmp(&n.as_f64())
                        .unwrap_or(Ordering::Equal),
                    (Value::String(m), Value::String(n)) if item.ty.is_text() => {
                        m.to_lowercase().cmp(&n.to_lowercase())
                    }
                    (Value::String(m), Value::String(n)) => m.cmp(n),
                    (Value::Bool(m), Value::Bool(n)) => m.cmp(n),
                    _ => Ordering::Equal,
                };
                if item.descending { o.reverse() } else { o }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.get("Id").as_str().cmp(&b.get("Id").as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-11-02T12:00:00Z".parse().unwrap()
    }

    fn record(v: Value) -> Record {
        Record {
            fields: v.as_object().unwrap().clone(),
            deleted: false,
        }
    }

    #[test]
    fn parses_the_incremental_query_shape() {
        let q = parse(
            "select Id, Name, score_threshold__c FROM mql_threshold__c WHERE (SystemModstamp = 2026-01-01T00:00:00Z AND Id > '000000000000000') OR SystemModstamp > 2026-01-01T00:00:00+01:00 ORDER BY SystemModstamp ASC, Id LIMIT 10",
            now(),
        )
        .unwrap();
        assert_eq!(q.object.name, "MQL_Threshold__c");
        assert_eq!(q.fields, ["Id", "Name", "Score_Threshold__c"]);
        assert_eq!(q.limit, Some(10));
        assert_eq!(q.order.len(), 2);
        let r = record(
            json!({"Id": "a0T5g0000000001AAA", "SystemModstamp": "2025-12-31T23:30:00.000+0000"}),
        );
        assert!(q.filter.as_ref().unwrap().matches(&r, None));
        let r = record(
            json!({"Id": "a0T5g0000000001AAA", "SystemModstamp": "2025-12-31T22:30:00.000+0000"}),
        );
        assert!(!q.filter.as_ref().unwrap().matches(&r, None));
    }

    #[test]
    fn strings_escape_and_compare_case_insensitively() {
        let q = parse(
            r"SELECT Id FROM Lead WHERE LastName = 'o\'brien' AND Email LIKE '%\_x@%' AND Status IN ('Open', 'Nurture') AND Region__c NOT IN ('EMEA')",
            now(),
        )
        .unwrap();
        let hit = record(
            json!({"LastName": "O'Brien", "Email": "a_x@b.com", "Status": "nurture", "Region__c": "NA"}),
        );
        let miss = record(
            json!({"LastName": "O'Brien", "Email": "ax@b.com", "Status": "nurture", "Region__c": "NA"}),
        );
        assert!(q.filter.as_ref().unwrap().matches(&hit, None));
        assert!(!q.filter.as_ref().unwrap().matches(&miss, None));
    }

    #[test]
    fn refuses_what_the_vendor_refuses() {
        let err = parse("SELECT Bogus FROM Contact", now()).unwrap_err();
        assert_eq!(err.code, "INVALID_FIELD");
        assert!(
            err.message.contains("ERROR at Row:1:Column:8"),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("No such column 'Bogus' on entity 'Contact'")
        );
        assert_eq!(
            parse("SELECT Id FROM Nope__c", now()).unwrap_err().code,
            "INVALID_TYPE"
        );
        assert_eq!(
            parse(
                "SELECT Id FROM Lead WHERE SystemModstamp > '2024-01-01T00:00:00Z'",
                now()
            )
            .unwrap_err()
            .code,
            "INVALID_FIELD"
        );
        assert_eq!(
            parse("SELECT Id FROM Lead WHERE", now()).unwrap_err().code,
            "MALFORMED_QUERY"
        );
        assert_eq!(
            parse(r"SELECT Id FROM Lead WHERE LastName = 'a\qb'", now())
                .unwrap_err()
                .code,
            "MALFORMED_QUERY"
        );
        assert_eq!(parse("", now()).unwrap_err().code, "MALFORMED_QUERY");
    }

    #[test]
    fn the_tie_breaker_cursor_query_starts_its_scan_at_the_cursor() {
        let q = parse(
            "SELECT Id FROM Lead WHERE (SystemModstamp = 2026-01-01T00:00:00Z AND Id > '00Q5g0000000001AAA') OR SystemModstamp > 2026-01-01T00:00:00Z ORDER BY SystemModstamp, Id",
            now(),
        )
        .unwrap();
        assert_eq!(
            q.filter.unwrap().lower_bound("SystemModstamp").as_deref(),
            Some("2026-01-01T00:00:00.000+0000")
        );
        let q = parse(
            "SELECT Id FROM Lead WHERE SystemModstamp > 2026-01-01T00:00:00Z OR Status = 'x'",
            now(),
        )
        .unwrap();
        assert_eq!(q.filter.unwrap().lower_bound("SystemModstamp"), None);
    }

    #[test]
    fn date_literals_bind_to_the_field_type() {
        let q = parse("SELECT COUNT() FROM Opportunity WHERE CloseDate >= 2026-10-01 AND CreatedDate = LAST_N_DAYS:3", now()).unwrap();
        assert!(q.count_only);
        let r = record(
            json!({"CloseDate": "2026-10-05", "CreatedDate": "2026-10-31T01:00:00.000+0000"}),
        );
        assert!(q.filter.as_ref().unwrap().matches(&r, None));
        let err = parse(
            "SELECT Id FROM Opportunity WHERE CloseDate > 2026-10-01T00:00:00Z",
            now(),
        )
        .unwrap_err();
        assert_eq!(err.code, "INVALID_FIELD");
    }

    /// `SELECT Id FROM Task WHERE MQL_Alert_Key__c IN ('k...', ...)` padded with spaces to
    /// exactly `len` characters.
    fn statement_of(len: usize) -> String {
        let keys: Vec<String> = (0..1_400).map(|i| format!("'{i:0>65}'")).collect();
        let mut q = format!(
            "SELECT Id FROM Task WHERE MQL_Alert_Key__c IN ({})",
            keys.join(",")
        );
        assert!(q.len() < len);
        q.push_str(&" ".repeat(len - q.len()));
        q
    }

    #[test]
    fn statements_up_to_the_vendors_length_limit_parse() {
        let q = parse(&statement_of(MAX_STATEMENT_CHARS), now()).unwrap();
        assert_eq!(q.object.name, "Task");
        let err = parse(&statement_of(MAX_STATEMENT_CHARS + 1), now()).unwrap_err();
        assert_eq!(err.code, "MALFORMED_QUERY");
        assert!(err.message.contains("100001 characters"), "{}", err.message);
        assert!(err.message.contains("100000"), "{}", err.message);
    }

    #[test]
    fn string_literals_are_limited_to_4000_characters() {
        let at_limit = format!(
            "SELECT Id FROM Lead WHERE LastName = '{}'",
            "x".repeat(MAX_LITERAL_CHARS)
        );
        assert!(parse(&at_limit, now()).is_ok());
        let over = format!(
            "SELECT Id FROM Lead WHERE LastName = '{}'",
            "x".repeat(MAX_LITERAL_CHARS + 1)
        );
        let err = parse(&over, now()).unwrap_err();
        assert_eq!(err.code, "MALFORMED_QUERY");
        assert!(err.message.contains("4001 characters"), "{}", err.message);
        assert!(err.message.contains("Column:38"), "{}", err.message);
    }
}
