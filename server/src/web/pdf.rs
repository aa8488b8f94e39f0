//! A small PDF 1.4 writer for the evidence pack: A4 pages of wrapped text in the standard
//! Helvetica fonts, with uncompressed content streams.
//!
//! Why this route: the pack is text, and it must be produced on a fresh server with nothing
//! installed. Headless Chromium's print-to-PDF needs a browser on every server (and a process
//! per pack); `printpdf` 0.12 brings a whole HTML layout engine and font loading for what is
//! here a few hundred lines of text; `genpdf` needs TrueType font files on disk. The 14
//! standard PDF fonts need no embedding, so a writer of ~150 lines gives a valid, searchable,
//! deterministic PDF whose text any reader (and the tests) can find. Characters outside
//! Windows-1252 (which the standard fonts cover) are written as `?`.

/// What the pack is made of, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    Title(String),
    Heading(String),
    Subheading(String),
    Text(String),
}

const PAGE_WIDTH: f32 = 595.0;
const PAGE_HEIGHT: f32 = 842.0;
const MARGIN: f32 = 50.0;

/// Font resource name, size and leading of each kind of block, and how many characters fit on
/// a line (Helvetica averages about half an em per character; this errs on the short side).
fn style(block: &Block) -> (&'static str, f32, f32, usize) {
    match block {
        Block::Title(_) => ("F2", 16.0, 22.0, 55),
        Block::Heading(_) => ("F2", 12.5, 18.0, 72),
        Block::Subheading(_) => ("F2", 10.0, 14.0, 92),
        Block::Text(_) => ("F1", 9.0, 12.0, 105),
    }
}

/// Splits text into lines of at most `width` characters, at spaces where possible.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            let mut word = word.to_string();
            while word.chars().count() > width {
                if !line.is_empty() {
                    out.push(std::mem::take(&mut line));
                }
                let head: String = word.chars().take(width).collect();
                word = word.chars().skip(width).collect();
                out.push(head);
            }
            let needed =
                line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
            if needed > width && !line.is_empty() {
                out.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&word);
        }
        out.push(line);
    }
    out
}

/// A PDF string literal in Windows-1252 (the standard fonts' encoding here).
fn pdf_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'(');
    for c in text.chars() {
        let byte = match c {
            '(' | ')' | '\\' => {
                out.push(b'\\');
                c as u8
            }
            '€' => 0x80,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '–' => 0x96,
            '—' => 0x97,
            ' '..='~' => c as u8,
            '\u{a0}'..='\u{ff}' => u8::try_from(u32::from(c)).unwrap_or(b'?'),
            _ => b'?',
        };
        out.push(byte);
    }
    out.push(b')');
}

/// Lays the blocks out on A4 pages: one content stream per page.
fn layout(blocks: &[Block]) -> Vec<Vec<u8>> {
    let mut pages = Vec::new();
    let mut page = Vec::new();
    let mut y = PAGE_HEIGHT - MARGIN;
    for block in blocks {
        let (font, size, leading, width) = style(block);
        let (Block::Title(text)
        | Block::Heading(text)
        | Block::Subheading(text)
        | Block::Text(text)) = block;
        if !matches!(block, Block::Text(_)) {
            y -= leading / 2.0; // space above headings
        }
        for line in wrap(text, width) {
            if y - leading < MARGIN {
                pages.push(std::mem::take(&mut page));
                y = PAGE_HEIGHT - MARGIN;
            }
            y -= leading;
            page.extend_from_slice(format!("BT /{font} {size} Tf {MARGIN} {y:.1} Td ").as_bytes());
            pdf_string(&line, &mut page);
            page.extend_from_slice(b" Tj ET\n");
        }
    }
    pages.push(page);
    pages
}

/// The whole PDF file.
pub fn render(title: &str, blocks: &[Block]) -> Vec<u8> {
    let mut pages = layout(blocks);
    // Every page names the document and its place in it, so loose pages can be put back.
    let count = pages.len();
    for (i, page) in pages.iter_mut().enumerate() {
        let y = MARGIN / 2.0;
        page.extend_from_slice(format!("BT /F1 8 Tf {MARGIN} {y:.1} Td ").as_bytes());
        pdf_string(&format!("{title} - page {} of {count}", i + 1), page);
        page.extend_from_slice(b" Tj ET\n");
    }
    // Objects: 1 catalog, 2 page tree, 3 and 4 fonts, 5 info, then a page and its content
    // stream for each page.
    let first_page = 6;
    let mut objects: Vec<Vec<u8>> = Vec::new();
    objects.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    let kids: Vec<String> = (0..pages.len())
        .map(|i| format!("{} 0 R", first_page + 2 * i))
        .collect();
    objects.push(
        format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            pages.len()
        )
        .into_bytes(),
    );
    for font in ["Helvetica", "Helvetica-Bold"] {
        objects.push(
            format!(
                "<< /Type /Font /Subtype /Type1 /BaseFont /{font} /Encoding /WinAnsiEncoding >>"
            )
            .into_bytes(),
        );
    }
    let mut info = b"<< /Producer (Doorstep) /Title ".to_vec();
    pdf_string(title, &mut info);
    info.extend_from_slice(b" >>");
    objects.push(info);
    for (i, content) in pages.iter().enumerate() {
        let content_id = first_page + 2 * i + 1;
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}] \
                 /Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents {content_id} 0 R >>"
            )
            .into_bytes(),
        );
        let mut stream = format!("<< /Length {} >>\nstream\n", content.len()).into_bytes();
        stream.extend_from_slice(content);
        stream.extend_from_slice(b"\nendstream");
        objects.push(stream);
    }
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R /Info 5 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_wraps_at_spaces_and_splits_long_words() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh", 3), ["abc", "def", "gh"]);
        assert_eq!(wrap("", 5), [""]);
    }

    #[test]
    fn strings_are_escaped_and_encoded() {
        let mut out = Vec::new();
        pdf_string("a(b)\\ £5 Ω", &mut out);
        assert_eq!(out, b"(a\\(b\\)\\\\ \xa35 ?)");
    }

    #[test]
    fn a_long_pack_is_a_valid_multi_page_pdf() {
        let blocks: Vec<Block> = (0..200).map(|i| Block::Text(format!("line {i}"))).collect();
        let pdf = render("T", &blocks);
        assert!(pdf.starts_with(b"%PDF-1.4"));
        assert!(pdf.ends_with(b"%%EOF\n"));
        // One ASCII character per byte, so that string offsets are byte offsets.
        let text: String = pdf
            .iter()
            .map(|&b| if b.is_ascii() { b as char } else { '?' })
            .collect();
        assert!(text.contains("(line 199) Tj"));
        assert!(text.contains("(T - page 4 of 4) Tj"));
        assert!(
            text.contains("/Count 4"),
            "200 lines of 12pt on A4 take four pages"
        );
        // Every xref offset points at its object.
        let xref_at: usize = text
            .rsplit("startxref\n")
            .next()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let table = &text[xref_at..];
        for (n, line) in table.lines().skip(3).take(5).enumerate() {
            let offset: usize = line[..10].parse().unwrap();
            assert!(
                text[offset..].starts_with(&format!("{} 0 obj", n + 1)),
                "object {}",
                n + 1
            );
        }
    }
}
