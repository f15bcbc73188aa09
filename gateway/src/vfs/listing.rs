//! Directory listings fetched page by page, in the store's key order.
//!
//! A listing holds the entries of one directory sorted as the store lists
//! them (byte order of the key; a sub-directory's key ends with `/`). Pages
//! are pulled only as readers advance, so the first READDIR of a prefix with
//! a million keys is answered after one LIST page, and a reader that stops
//! early never pays for the rest.
//!
//! Which keys become names (the rules the README documents):
//! - a sub-prefix `p/name/` is a directory `name`; an object `p/name` is a
//!   file `name`; the marker object `p/` of the directory itself is skipped;
//! - a segment that is empty (`a//b`), `.` or `..`, longer than 255 bytes,
//!   or contains NUL is not a valid name: the key is hidden and counted;
//! - when a key is both an object and a prefix (`a` and `a/b`), the
//!   directory wins and the object is hidden and counted.
//!
//! The last rule needs care when streaming: the object `a` sorts before
//! `a/`, which may arrive on a later page. A file entry therefore becomes
//! visible only once the store has listed past `a/` (or the listing is
//! complete); `visible` marks that resolved prefix of the entries.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::handles::NodeKind;
use super::NAME_BYTES_MAX;

/// One entry: its key relative to the directory (`name` or `name/`).
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub suffix: Box<str>,
    pub id: u64,
    pub size: u64,
    pub mtime: SystemTime,
    /// The object's version as listed (S3 LIST carries ETags), so reads
    /// through the block cache need no HEAD.
    pub etag: Option<ListedEtag>,
}

/// An ETag as a listing keeps it: the common single-part S3 form (an MD5 in
/// hex) in 16 bytes inline, anything else on the heap. A directory
/// of millions of entries pays no allocation per ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListedEtag {
    Md5([u8; 16]),
    Other(Box<str>),
}

impl ListedEtag {
    pub fn new(etag: &str) -> ListedEtag {
        // Stores hand ETags over without quotes (S3Store strips them).
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        if etag.len() == 32 {
            let mut md5 = [0u8; 16];
            let ok = etag
                .as_bytes()
                .chunks(2)
                .zip(md5.iter_mut())
                .all(|(pair, out)| match (digit(pair[0]), digit(pair[1])) {
                    (Some(h), Some(l)) => {
                        *out = h << 4 | l;
                        true
                    }
                    _ => false,
                });
            if ok {
                return ListedEtag::Md5(md5);
            }
        }
        ListedEtag::Other(etag.into())
    }

    /// The ETag exactly as the store gave it.
    pub fn to_arc(&self) -> Arc<str> {
        match self {
            ListedEtag::Md5(md5) => {
                use std::fmt::Write;
                let mut s = String::with_capacity(32);
                for b in md5 {
                    let _ = write!(s, "{b:02x}");
                }
                Arc::from(s)
            }
            ListedEtag::Other(s) => Arc::from(&**s),
        }
    }
}

impl DirEntry {
    pub fn kind(&self) -> NodeKind {
        if self.suffix.ends_with('/') {
            NodeKind::Dir
        } else {
            NodeKind::File
        }
    }

    /// The name shown to clients.
    pub fn name(&self) -> &str {
        self.suffix.trim_end_matches('/')
    }
}

/// Whether a listed key suffix can be shown as a name.
pub fn suffix_is_valid(suffix: &str) -> bool {
    let name = suffix.strip_suffix('/').unwrap_or(suffix);
    !(name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > NAME_BYTES_MAX
        || name.contains('/')
        || name.contains('\0'))
}

/// What a listing knows about one key.
#[derive(Debug)]
pub enum Found<'a> {
    Entry(&'a DirEntry),
    Absent,
    /// The listing has not been fetched that far.
    NotYetListed,
}

/// The entries fetched so far and where the store's listing stands.
#[derive(Debug)]
pub struct ListingState {
    pub entries: Vec<DirEntry>,
    /// `entries[..visible]` are final and may be shown.
    pub visible: usize,
    pub next_token: Option<String>,
    pub started: bool,
    pub complete: bool,
    /// Keys hidden by the naming rules.
    pub hidden_keys: u64,
    pub touched: Instant,
    /// The last key suffix the store listed so far.
    pub listed_upto: Option<Box<str>>,
    /// Where each appended page starts in `entries` and when it was
    /// fetched: how old what a listing says about an entry is.
    pages: Vec<(usize, Instant)>,
}

impl Default for ListingState {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            visible: 0,
            next_token: None,
            started: false,
            complete: false,
            hidden_keys: 0,
            touched: Instant::now(),
            listed_upto: None,
            pages: Vec::new(),
        }
    }
}

impl ListingState {
    /// Append one page. `page` holds valid entries in key order, all after
    /// the existing ones; `last_suffix` is the last key suffix the store
    /// listed on this page (valid or not); `hidden` counts keys the page
    /// dropped as invalid names.
    pub fn append(
        &mut self,
        page: Vec<DirEntry>,
        last_suffix: Option<&str>,
        next_token: Option<String>,
        hidden: u64,
    ) {
        self.started = true;
        self.hidden_keys += hidden;
        if let Some(l) = last_suffix {
            self.listed_upto = Some(l.into());
        }
        // Entries removed from the unresolved tail below can make a later
        // entry look one page older than it is: never younger.
        self.pages.push((self.entries.len(), Instant::now()));
        for e in page {
            if e.kind() == NodeKind::Dir {
                // An object with the same name is hidden: it can only be in
                // the unresolved tail, since it sorts right before `name/`
                // relative to anything already resolved.
                let name = e.name();
                if let Some(i) = self.entries[self.visible..]
                    .iter()
                    .position(|x| x.kind() == NodeKind::File && &*x.suffix == name)
                {
                    self.entries.remove(self.visible + i);
                    self.hidden_keys += 1;
                    tracing::warn!(
                        name,
                        "key is both an object and a prefix; the object is hidden"
                    );
                }
            }
            self.entries.push(e);
        }
        self.next_token = next_token;
        self.complete = self.next_token.is_none();
        if self.complete {
            self.entries.shrink_to_fit();
        }
        self.touched = Instant::now();
        while self.visible < self.entries.len() {
            let e = &self.entries[self.visible];
            if !self.complete && e.kind() == NodeKind::File {
                // Resolved once the store has listed past `name/`.
                let past = last_suffix.is_some_and(|last| {
                    let mut dir = String::with_capacity(e.suffix.len() + 1);
                    dir.push_str(&e.suffix);
                    dir.push('/');
                    last >= dir.as_str()
                });
                if !past {
                    break;
                }
            }
            self.visible += 1;
        }
    }

    /// Index of the first visible entry after key suffix `after`; `None`
    /// when the answer depends on pages not fetched yet.
    pub fn position_after(&self, after: &str) -> Option<usize> {
        let p = self.entries[..self.visible].partition_point(|e| &*e.suffix <= after);
        if p == self.visible && !self.complete {
            None
        } else {
            Some(p)
        }
    }

    /// When the page that listed the visible entry `suffix` was fetched.
    pub fn fetched_at(&self, suffix: &str) -> Option<Instant> {
        let vis = &self.entries[..self.visible];
        let p = vis.partition_point(|e| &*e.suffix < suffix);
        if vis.get(p).is_none_or(|e| &*e.suffix != suffix) {
            return None;
        }
        let page = self.pages.partition_point(|(start, _)| *start <= p);
        page.checked_sub(1).map(|i| self.pages[i].1)
    }

    /// Look up the visible entry with key suffix `suffix`.
    pub fn find(&self, suffix: &str) -> Found<'_> {
        let vis = &self.entries[..self.visible];
        let p = vis.partition_point(|e| &*e.suffix < suffix);
        match vis.get(p) {
            Some(e) if &*e.suffix == suffix => Found::Entry(e),
            Some(_) => Found::Absent,
            None if self.complete => Found::Absent,
            None => Found::NotYetListed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(suffix: &str, id: u64) -> DirEntry {
        DirEntry {
            suffix: suffix.into(),
            id,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            etag: None,
        }
    }

    #[test]
    fn validity_rules() {
        assert!(suffix_is_valid("a"));
        assert!(suffix_is_valid("a b/"));
        assert!(!suffix_is_valid("/"));
        assert!(!suffix_is_valid("./"));
        assert!(!suffix_is_valid(".."));
        assert!(!suffix_is_valid(&"x".repeat(256)));
        assert!(suffix_is_valid(&"x".repeat(255)));
    }

    #[test]
    fn listed_etags_round_trip() {
        for e in [
            "0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef-12",
            "0123456789ABCDEF0123456789ABCDEF",
            "\"0123456789abcdef0123456789abcdef\"",
            "ino-size-mtime",
            "",
        ] {
            assert_eq!(&*ListedEtag::new(e).to_arc(), e, "{e}");
        }
        // The form S3Store hands over (quotes stripped) is kept inline.
        assert!(matches!(
            ListedEtag::new("d41d8cd98f00b204e9800998ecf8427e"),
            ListedEtag::Md5(_)
        ));
        assert!(std::mem::size_of::<Option<ListedEtag>>() <= 24);
    }

    #[test]
    fn object_and_prefix_of_the_same_name_across_pages() {
        let mut s = ListingState::default();
        // Page 1 ends at "a-b": the object "a" cannot be shown yet.
        s.append(
            vec![e("a", 1), e("a-b", 2)],
            Some("a-b"),
            Some("t1".into()),
            0,
        );
        assert_eq!(s.visible, 0);
        assert_eq!(s.position_after(""), None);
        // Page 2 brings "a/": the object is hidden, the directory shown.
        s.append(vec![e("a/", 3), e("b", 4)], Some("b"), Some("t2".into()), 0);
        let names: Vec<_> = s.entries[..s.visible].iter().map(|e| &*e.suffix).collect();
        assert_eq!(names, vec!["a-b", "a/"]);
        assert_eq!(s.hidden_keys, 1);
        // "b" waits for the store to pass "b/".
        s.append(vec![], None, None, 2);
        assert!(s.complete);
        assert_eq!(s.visible, 3);
        assert_eq!(s.hidden_keys, 3);
        assert_eq!(s.position_after("a-b"), Some(1));
        assert_eq!(s.position_after("zzz"), Some(3));
        assert!(matches!(s.find("b"), Found::Entry(e) if e.id == 4));
        assert!(matches!(s.find("a"), Found::Absent));
        // Each entry is as old as its page at most.
        assert_eq!(s.fetched_at("a-b"), Some(s.pages[0].1));
        assert_eq!(s.fetched_at("b"), Some(s.pages[1].1));
        assert!(s.fetched_at("a").is_none() && s.fetched_at("zzz").is_none());
    }

    #[test]
    fn files_resolve_once_the_listing_passes_their_prefix() {
        let mut s = ListingState::default();
        s.append(vec![e("x", 1), e("y/", 2)], Some("y/"), Some("t".into()), 0);
        // "x/" < "y/": the store has listed past it.
        assert_eq!(s.visible, 2);
        assert!(matches!(s.find("x"), Found::Entry(e) if e.id == 1));
        assert!(
            matches!(s.find("z"), Found::NotYetListed),
            "unknown until the next page"
        );
    }
}
