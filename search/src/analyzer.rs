//! Text analysis that works for Korean, Japanese and Chinese without dictionaries.
//!
//! Chat text is cut into tokens in one pass over the original string, keeping byte offsets
//! into it (for highlighting) and token positions (for phrases):
//!
//! - **Normalisation.** Each character with its combining marks is NFKC-normalised and
//!   lower-cased on its own, so fullwidth `ＲＵＳＴ` is `rust`, halfwidth `ｶﾞ` is `ガ`, `①`
//!   is `1`, and every output character still maps to the bytes it came from.
//! - **Words.** Runs of letters and digits of scripts written with spaces (Latin, Cyrillic,
//!   Greek, …) are one token each, cut at 64 characters. Anything else (spaces, punctuation,
//!   symbols) separates tokens and is not indexed.
//! - **CJK runs.** Runs of Hangul, Hiragana, Katakana and Han are indexed as overlapping
//!   **bigrams** at consecutive positions, like Lucene's CJK bigram filter: `채팅방에서` is
//!   `채팅` `팅방` `방에` `에서` at positions 0–3. A bigram never spans a space, punctuation
//!   or a change to another script. The index also gets every CJK character as a
//!   **unigram** at the position of the bigram it starts, so a one-character query (`밥`,
//!   `猫`) finds the character anywhere, not only where it stands alone.
//! - **Emoji** are one token each (skin-tone modifiers, variation selectors and joiners are
//!   dropped), so `🎉` is searchable.
//!
//! Queries go through the same analysis in [`Mode::Query`], which leaves out the extra
//! unigrams of runs longer than one: `에서울` becomes the phrase `에서` `서울` at consecutive
//! positions, which cannot match text where those syllables are not adjacent.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Name the analyzer is registered under in the index.
pub const TOKENIZER: &str = "chat";

/// Longest word token, in characters; longer runs of letters are cut into several tokens.
pub const MAX_WORD_CHARS: usize = 64;

/// Whether tokens are for the index or for a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Bigrams and a unigram for every CJK character.
    #[default]
    Index,
    /// Bigrams only; a unigram only for a CJK run of one character.
    Query,
}

/// The tantivy tokenizer: [`analyze`] in a given mode, reusing its token buffer.
#[derive(Debug, Clone, Default)]
pub struct ChatTokenizer {
    mode: Mode,
    tokens: Vec<Token>,
}

impl ChatTokenizer {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            tokens: Vec::new(),
        }
    }
}

/// The tokens of one text, handed out one by one.
#[derive(Debug)]
pub struct ChatTokenStream<'a> {
    tokens: &'a mut Vec<Token>,
    next: usize,
}

impl Tokenizer for ChatTokenizer {
    type TokenStream<'a> = ChatTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> ChatTokenStream<'a> {
        analyze_into(text, self.mode, &mut self.tokens);
        ChatTokenStream {
            tokens: &mut self.tokens,
            next: 0,
        }
    }
}

impl TokenStream for ChatTokenStream<'_> {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next.saturating_sub(1)]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next.saturating_sub(1)]
    }
}

/// The tokens of `text`, in position order.
pub fn analyze(text: &str, mode: Mode) -> Vec<Token> {
    let mut tokens = Vec::new();
    analyze_into(text, mode, &mut tokens);
    tokens
}

/// What a normalised character is to the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Part of a word of a script written with spaces.
    Word,
    /// Hangul, Kana or Han.
    Cjk,
    /// A token on its own.
    Emoji,
    /// Dropped without ending anything (joiners, variation selectors, skin tones).
    Ignore,
    /// Ends the current token.
    Separator,
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0xAC00..=0xD7A3            // Hangul syllables
        | 0x1100..=0x11FF          // Hangul Jamo
        | 0x3131..=0x318E          // Hangul compatibility Jamo
        | 0xA960..=0xA97F          // Hangul Jamo extended-A
        | 0xD7B0..=0xD7FF          // Hangul Jamo extended-B
        | 0x3041..=0x309F          // Hiragana
        | 0x30A0..=0x30FA          // Katakana (not the middle dot U+30FB)
        | 0x30FC..=0x30FF          // Katakana prolonged sound mark, iteration marks
        | 0x31F0..=0x31FF          // Katakana phonetic extensions
        | 0x3005..=0x3007          // 々 〆 〇
        | 0x303B                   // 〻
        | 0x3400..=0x4DBF          // CJK extension A
        | 0x4E00..=0x9FFF          // CJK unified ideographs
        | 0xF900..=0xFAFF          // CJK compatibility ideographs
        | 0x20000..=0x3134F // CJK extensions B–G
    )
}

fn is_emoji(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1F3FA
        | 0x1F400..=0x1FAFF
        | 0x2600..=0x27BF
        | 0x2B00..=0x2BFF
        | 0x2300..=0x23FF
    )
}

fn is_ignorable(c: char) -> bool {
    matches!(c as u32,
        0x200D                     // zero-width joiner
        | 0xFE00..=0xFE0F          // variation selectors
        | 0x1F3FB..=0x1F3FF        // skin-tone modifiers
        | 0xE0020..=0xE007F        // tag characters (flag sequences)
        | 0x20E3 // combining keycap
    )
}

fn classify(c: char, in_word: bool) -> Class {
    if c.is_ascii() {
        return if c.is_ascii_alphanumeric() {
            Class::Word
        } else {
            Class::Separator
        };
    }
    if is_cjk(c) {
        Class::Cjk
    } else if is_ignorable(c) {
        Class::Ignore
    } else if is_emoji(c) {
        Class::Emoji
    } else if c.is_alphanumeric() || (in_word && is_combining_mark(c)) {
        Class::Word
    } else {
        Class::Separator
    }
}

/// Characters that belong to the character before them for normalisation: combining marks,
/// conjoining Hangul vowels and finals (composed into a syllable by NFKC) and the halfwidth
/// kana voicing marks (composed into the kana before them).
fn attaches_to_previous(c: char) -> bool {
    matches!(c as u32, 0x1160..=0x11FF | 0xD7B0..=0xD7FF | 0xFF9E | 0xFF9F)
        || (!c.is_ascii() && is_combining_mark(c))
}

/// Characters NFKC leaves alone and that have no case: the common case, done without the
/// normaliser.
fn is_plain(c: char) -> bool {
    matches!(c as u32, 0xAC00..=0xD7A3 | 0x4E00..=0x9FFF | 0x3041..=0x3096 | 0x30A1..=0x30FA)
}

/// Calls `f(char, from, to)` for every normalised, lower-cased character of `text`, with the
/// byte range of the original text it came from.
fn normalized(text: &str, mut f: impl FnMut(char, usize, usize)) {
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let mut end = start + c.len_utf8();
        while let Some(&(i, next)) = chars.peek() {
            if !attaches_to_previous(next) {
                break;
            }
            end = i + next.len_utf8();
            chars.next();
        }
        let single = end == start + c.len_utf8();
        if single && c.is_ascii() {
            f(c.to_ascii_lowercase(), start, end);
        } else if single && is_plain(c) {
            f(c, start, end);
        } else {
            for n in text[start..end].nfkc() {
                for l in n.to_lowercase() {
                    f(l, start, end);
                }
            }
        }
    }
}

/// A CJK character with the original bytes it came from.
#[derive(Debug, Clone, Copy)]
struct Spanned {
    c: char,
    from: usize,
    to: usize,
}

struct Builder<'a> {
    mode: Mode,
    out: &'a mut Vec<Token>,
    position: usize,
    word: String,
    word_chars: usize,
    word_from: usize,
    word_to: usize,
    run: Vec<Spanned>,
}

impl Builder<'_> {
    fn push(&mut self, text: String, from: usize, to: usize, position: usize) {
        self.out.push(Token {
            offset_from: from,
            offset_to: to,
            position,
            text,
            position_length: 1,
        });
    }

    fn end_word(&mut self) {
        if self.word.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.word);
        let (from, to, position) = (self.word_from, self.word_to, self.position);
        self.push(text, from, to, position);
        self.position += 1;
        self.word_chars = 0;
    }

    fn word_char(&mut self, c: char, from: usize, to: usize) {
        if self.word_chars == MAX_WORD_CHARS {
            self.end_word();
        }
        if self.word.is_empty() {
            self.word_from = from;
        }
        self.word.push(c);
        self.word_to = to;
        self.word_chars += 1;
    }

    fn end_run(&mut self) {
        let run = std::mem::take(&mut self.run);
        let p = self.position;
        match run.as_slice() {
            [] => return,
            [one] => self.push(one.c.to_string(), one.from, one.to, p),
            _ => {
                for (i, pair) in run.windows(2).enumerate() {
                    let mut text = String::with_capacity(8);
                    text.push(pair[0].c);
                    text.push(pair[1].c);
                    self.push(text, pair[0].from, pair[1].to, p + i);
                    if self.mode == Mode::Index {
                        self.push(pair[0].c.to_string(), pair[0].from, pair[0].to, p + i);
                    }
                }
                if self.mode == Mode::Index
                    && let Some(last) = run.last()
                {
                    self.push(last.c.to_string(), last.from, last.to, p + run.len() - 1);
                }
            }
        }
        self.position += run.len();
        // Hand the allocation back for the next run.
        self.run = run;
        self.run.clear();
    }

    fn separate(&mut self) {
        self.end_word();
        self.end_run();
    }
}

/// Analyses `text` into `out` (cleared first).
pub fn analyze_into(text: &str, mode: Mode, out: &mut Vec<Token>) {
    out.clear();
    let mut b = Builder {
        mode,
        out,
        position: 0,
        word: String::new(),
        word_chars: 0,
        word_from: 0,
        word_to: 0,
        run: Vec::new(),
    };
    normalized(text, |c, from, to| match classify(c, !b.word.is_empty()) {
        Class::Word => {
            b.end_run();
            b.word_char(c, from, to);
        }
        Class::Cjk => {
            b.end_word();
            b.run.push(Spanned { c, from, to });
        }
        Class::Emoji => {
            b.separate();
            let p = b.position;
            b.push(c.to_string(), from, to, p);
            b.position += 1;
        }
        Class::Ignore => {}
        Class::Separator => b.separate(),
    });
    b.separate();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (text, position) of each token.
    fn tokens(text: &str, mode: Mode) -> Vec<(String, usize)> {
        analyze(text, mode)
            .into_iter()
            .map(|t| (t.text, t.position))
            .collect()
    }

    fn t(pairs: &[(&str, usize)]) -> Vec<(String, usize)> {
        pairs.iter().map(|(s, p)| ((*s).to_owned(), *p)).collect()
    }

    #[test]
    fn latin_words_are_lower_cased_and_split_on_punctuation() {
        assert_eq!(
            tokens("Hello, WORLD! It's 2024-11-22.", Mode::Index),
            t(&[
                ("hello", 0),
                ("world", 1),
                ("it", 2),
                ("s", 3),
                ("2024", 4),
                ("11", 5),
                ("22", 6)
            ])
        );
        // Offsets point into the original text.
        let toks = analyze("  Größe  straße", Mode::Index);
        assert_eq!(toks[0].text, "größe");
        assert_eq!(
            &"  Größe  straße"[toks[0].offset_from..toks[0].offset_to],
            "Größe"
        );
        assert_eq!(toks[1].text, "straße");
    }

    #[test]
    fn korean_runs_become_bigrams_with_positions_and_offsets() {
        let text = "채팅방에서 만나요";
        assert_eq!(
            tokens(text, Mode::Query),
            t(&[
                ("채팅", 0),
                ("팅방", 1),
                ("방에", 2),
                ("에서", 3),
                ("만나", 5),
                ("나요", 6)
            ])
        );
        let toks = analyze(text, Mode::Query);
        for tok in &toks {
            assert_eq!(&text[tok.offset_from..tok.offset_to], tok.text);
        }
        // The index also has every syllable at the position of the bigram it starts.
        assert_eq!(
            tokens("채팅방", Mode::Index),
            t(&[("채팅", 0), ("채", 0), ("팅방", 1), ("팅", 1), ("방", 2)])
        );
    }

    #[test]
    fn a_single_cjk_character_is_a_unigram() {
        assert_eq!(tokens("밥", Mode::Query), t(&[("밥", 0)]));
        assert_eq!(
            tokens("猫 と 犬", Mode::Query),
            t(&[("猫", 0), ("と", 1), ("犬", 2)])
        );
    }

    #[test]
    fn bigrams_never_span_spaces_punctuation_or_scripts() {
        assert_eq!(
            tokens("서울, 에서", Mode::Query),
            t(&[("서울", 0), ("에서", 2)])
        );
        assert_eq!(
            tokens("Rust로 채팅", Mode::Query),
            t(&[("rust", 0), ("로", 1), ("채팅", 2)])
        );
        assert_eq!(
            tokens("abc가나def", Mode::Query),
            t(&[("abc", 0), ("가나", 1), ("def", 3)])
        );
    }

    #[test]
    fn japanese_and_chinese_mix_kana_and_han_in_one_run() {
        assert_eq!(
            tokens("東京に行きます。", Mode::Query),
            t(&[
                ("東京", 0),
                ("京に", 1),
                ("に行", 2),
                ("行き", 3),
                ("きま", 4),
                ("ます", 5)
            ])
        );
        assert_eq!(
            tokens("我们在聊天室见面", Mode::Query),
            t(&[
                ("我们", 0),
                ("们在", 1),
                ("在聊", 2),
                ("聊天", 3),
                ("天室", 4),
                ("室见", 5),
                ("见面", 6)
            ])
        );
        // Katakana with the prolonged sound mark stays one run; the middle dot separates.
        assert_eq!(
            tokens("チャット・ルーム", Mode::Query),
            t(&[
                ("チャ", 0),
                ("ャッ", 1),
                ("ット", 2),
                ("ルー", 4),
                ("ーム", 5)
            ])
        );
    }

    #[test]
    fn fullwidth_and_halfwidth_forms_are_normalised() {
        assert_eq!(
            tokens("ＲＵＳＴ　１２３", Mode::Query),
            t(&[("rust", 0), ("123", 1)])
        );
        let text = "ｶﾞｲﾄﾞ";
        let toks = analyze(text, Mode::Query);
        let texts: Vec<&str> = toks.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["ガイ", "イド"]);
        // The voiced kana covers both halfwidth characters it came from.
        assert_eq!(&text[toks[0].offset_from..toks[0].offset_to], "ｶﾞｲ");
        // Decomposed accents compose.
        assert_eq!(tokens("Cafe\u{301}", Mode::Query), t(&[("café", 0)]));
        // Conjoining Hangul jamo compose into the syllable.
        assert_eq!(
            tokens("\u{1100}\u{1161}\u{11A8}", Mode::Query),
            t(&[("각", 0)])
        );
    }

    #[test]
    fn emoji_are_tokens_and_modifiers_are_dropped() {
        assert_eq!(
            tokens("좋아요👍🏽 party🎉!", Mode::Query),
            t(&[("좋아", 0), ("아요", 1), ("👍", 3), ("party", 4), ("🎉", 5)])
        );
        assert_eq!(
            tokens("👨\u{200D}👩\u{200D}👧", Mode::Query),
            t(&[("👨", 0), ("👩", 1), ("👧", 2)])
        );
    }

    #[test]
    fn punctuation_and_symbols_alone_give_no_tokens() {
        assert!(analyze("  ?!…「」 -- ***", Mode::Query).is_empty());
        assert!(analyze("", Mode::Index).is_empty());
    }

    #[test]
    fn long_words_are_cut() {
        let long = "a".repeat(150);
        let toks = analyze(&long, Mode::Index);
        assert_eq!(toks.len(), 3);
        assert_eq!(toks[0].text.len(), MAX_WORD_CHARS);
        assert_eq!(toks[2].position, 2);
        assert_eq!(toks[2].offset_to, 150);
    }

    #[test]
    fn every_offset_is_a_char_boundary_for_odd_input() {
        let text = "x\u{301}\u{302}가\u{11A8}ｶﾞ\u{200D}🇰🇷 Ⅻ ﬁ ǅ İ \u{0}\u{FEFF}한";
        for mode in [Mode::Index, Mode::Query] {
            for tok in analyze(text, mode) {
                assert!(text.is_char_boundary(tok.offset_from), "{tok:?}");
                assert!(text.is_char_boundary(tok.offset_to), "{tok:?}");
                assert!(tok.offset_from < tok.offset_to, "{tok:?}");
            }
        }
    }
}
