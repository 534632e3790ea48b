//! The query language, parsed by hand so that no input is a syntax error:
//!
//! - words are AND-ed: `rust 채팅` finds messages with both;
//! - `"a quoted phrase"` matches its words next to each other (an unterminated quote runs to
//!   the end of the query);
//! - `-word` or `-"a phrase"` excludes messages that contain it;
//! - one word that analyses to several tokens is a phrase too: `채팅방에서` is the bigrams
//!   `채팅 팅방 방에 에서` at consecutive positions, `e-mail` is `e mail`;
//! - everything else is literal text: no fields, operators, wildcards or escapes, so `AND`,
//!   `*`, `:`, `(` and `\` are searched as written (punctuation is not indexed, so it just
//!   separates words).

use tantivy::Term;
use tantivy::query::{PhraseQuery, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};

use crate::analyzer::{Mode, analyze};
use crate::error::QueryProblem;
use crate::{Error, Result};

/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;

/// One AND-ed part of a query: its tokens with positions relative to the first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Clause {
    /// Messages containing it are left out.
    pub exclude: bool,
    /// (relative position, token text); never empty.
    pub tokens: Vec<(usize, String)>,
}

/// A parsed search query: at least one clause to look for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserQuery {
    clauses: Vec<Clause>,
}

impl UserQuery {
    /// Parses what a user typed. Fails only for empty, too long, or nothing-to-search input.
    pub fn parse(q: &str) -> Result<Self> {
        let q = q.trim();
        if q.is_empty() {
            return Err(Error::InvalidQuery(QueryProblem::Empty));
        }
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(Error::InvalidQuery(QueryProblem::TooLong));
        }
        let mut clauses = Vec::new();
        let mut rest = q;
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            let mut exclude = false;
            if let Some(after) = rest.strip_prefix('-')
                && after.starts_with(|c: char| !c.is_whitespace())
            {
                exclude = true;
                rest = after;
            }
            let text;
            if let Some(after) = rest.strip_prefix('"') {
                let end = after.find('"').unwrap_or(after.len());
                text = &after[..end];
                rest = after.get(end + 1..).unwrap_or("");
            } else {
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '"')
                    .unwrap_or(rest.len());
                text = &rest[..end];
                rest = &rest[end..];
            }
            let tokens = analyze(text, Mode::Query);
            let Some(first) = tokens.first().map(|t| t.position) else {
                continue;
            };
            clauses.push(Clause {
                exclude,
                tokens: tokens
                    .into_iter()
                    .map(|t| (t.position - first, t.text))
                    .collect(),
            });
        }
        if clauses.iter().all(|c| c.exclude) {
            return Err(Error::InvalidQuery(if clauses.is_empty() {
                QueryProblem::NothingToSearch
            } else {
                QueryProblem::OnlyExclusions
            }));
        }
        Ok(Self { clauses })
    }

    pub fn clauses(&self) -> &[Clause] {
        &self.clauses
    }

    /// The distinct token texts looked for (not excluded), sorted: what scoring and
    /// highlighting are about.
    pub fn positive_terms(&self) -> Vec<String> {
        let mut terms: Vec<String> = self
            .clauses
            .iter()
            .filter(|c| !c.exclude)
            .flat_map(|c| c.tokens.iter().map(|(_, t)| t.clone()))
            .collect();
        terms.sort();
        terms.dedup();
        terms
    }

    /// A canonical text of the query, for telling queries apart.
    pub(crate) fn canonical(&self) -> String {
        let mut out = String::new();
        for c in &self.clauses {
            out.push(if c.exclude { '-' } else { '+' });
            for (p, t) in &c.tokens {
                out.push_str(&format!("{p}:{t} "));
            }
            out.push('|');
        }
        out
    }
}

/// The Tantivy query of one clause on `field`.
pub(crate) fn clause_query(field: Field, clause: &Clause) -> Box<dyn Query> {
    match clause.tokens.as_slice() {
        [(_, text)] => Box::new(TermQuery::new(
            Term::from_field_text(field, text),
            IndexRecordOption::WithFreqs,
        )),
        tokens => Box::new(PhraseQuery::new_with_offset(
            tokens
                .iter()
                .map(|(p, t)| (*p, Term::from_field_text(field, t)))
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(q: &str) -> Vec<Clause> {
        UserQuery::parse(q).unwrap().clauses
    }

    fn c(exclude: bool, tokens: &[(usize, &str)]) -> Clause {
        Clause {
            exclude,
            tokens: tokens.iter().map(|(p, t)| (*p, (*t).to_owned())).collect(),
        }
    }

    #[test]
    fn words_phrases_and_exclusions() {
        assert_eq!(
            parsed(r#"Rust -java "채팅 방" 에서울"#),
            vec![
                c(false, &[(0, "rust")]),
                c(true, &[(0, "java")]),
                c(false, &[(0, "채팅"), (2, "방")]),
                c(false, &[(0, "에서"), (1, "서울")]),
            ]
        );
        // An unterminated quote runs to the end; a lone dash is not an exclusion.
        assert_eq!(
            parsed(r#"- "open ended"#),
            vec![c(false, &[(0, "open"), (1, "ended")])]
        );
        // Operators and syntax of other engines are plain text.
        assert_eq!(
            parsed("title:foo AND (bar* OR baz~2)"),
            vec![
                c(false, &[(0, "title"), (1, "foo")]),
                c(false, &[(0, "and")]),
                c(false, &[(0, "bar")]),
                c(false, &[(0, "or")]),
                c(false, &[(0, "baz"), (1, "2")]),
            ]
        );
    }

    #[test]
    fn refuses_what_cannot_be_searched() {
        let problem = |q: &str| match UserQuery::parse(q) {
            Err(Error::InvalidQuery(p)) => Some(p),
            _ => None,
        };
        assert_eq!(problem(""), Some(QueryProblem::Empty));
        assert_eq!(problem(" \t\n "), Some(QueryProblem::Empty));
        assert_eq!(problem("?!"), Some(QueryProblem::NothingToSearch));
        assert_eq!(problem(r#"""#), Some(QueryProblem::NothingToSearch));
        assert_eq!(problem("-spam"), Some(QueryProblem::OnlyExclusions));
        assert_eq!(problem(&"가".repeat(257)), Some(QueryProblem::TooLong));
        assert_eq!(problem(&"가".repeat(256)), None);
        assert_eq!(problem("🎉"), None);
    }
}
