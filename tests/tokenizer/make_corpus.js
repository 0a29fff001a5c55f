#!/usr/bin/env node
// Writes the tokenizer comparison corpus: a JSON array of strings, the same
// every run (seeded PRNG, no dependence on time or locale).
//
// Usage: node make_corpus.js OUT.json [COUNT]   (COUNT defaults to 3000)
//
// The strings cover what the DeepSeek-V3 pre-tokenizer regexes treat
// specially: code, CJK / Japanese / Korean / Arabic / Devanagari / Thai text,
// emoji (ZWJ sequences, flags, skin tones, keycaps), digit runs of every
// length (split in groups of 3), whitespace / newline / tab runs, punctuation
// runs, special tokens inside text, combining marks, very long words, and
// random code points from many blocks. Only well-formed Unicode (no lone
// surrogates), since the C++ side reads UTF-8.
'use strict';
const fs = require('fs');

function mulberry32(seed) {
  let a = seed >>> 0;
  return function () {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = mulberry32(20250321);
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));  // inclusive
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const repeat = (n, f) => Array.from({length: n}, f).join('');

const SPECIAL = [
  '<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>', '<｜▁pad▁｜>', '<｜User｜>',
  '<｜Assistant｜>', '<｜tool▁calls▁begin｜>', '<｜tool▁call▁begin｜>', '<｜tool▁sep｜>',
  '<｜tool▁call▁end｜>', '<｜tool▁calls▁end｜>', '<｜tool▁outputs▁begin｜>',
  '<｜tool▁output▁begin｜>', '<｜tool▁output▁end｜>', '<｜tool▁outputs▁end｜>',
  '<think>', '</think>', '<｜fim▁hole｜>', '<｜fim▁begin｜>', '<｜fim▁end｜>',
  // Near misses: must be encoded as ordinary text.
  '<｜User', '｜User｜>', '<|User|>', '<｜begin_of_sentence｜>', '<｜User｜｜>',
];
const CODE = [
  'def f(x):\n    return x ** 2 + 1\n',
  'for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n',
  'const x = await fetch(`https://api.example.com/v1/items?id=${id}`);\n',
  'fn main() -> Result<(), Box<dyn Error>> {\n    println!("{:?}", vec![1, 2, 3]);\n    Ok(())\n}',
  'SELECT name, COUNT(*) AS n FROM users WHERE age >= 18 GROUP BY name ORDER BY n DESC;',
  '<div class="card"><a href="/home">Home</a>&nbsp;&amp;&lt;&gt;</div>',
  'if [ -z "$HOME" ]; then echo "no home" >&2; exit 1; fi',
  'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hi") }\n',
  '#include <vector>\nstd::vector<std::pair<int, float>> v{{1, 2.5f}};',
  'x = {"key": [1, 2.0, -3e-5, null, true], \'k2\': None}',
  '    # comment with  double  spaces\n\n\n    pass\r\n',
  'lambda x: x if x>0 else -x  # abs',
  'public static void Main(string[] args) { Console.WriteLine("Hello, World!"); }',
  '$x = @{ Name = "a"; Value = 42 }; Write-Host $x.Name',
  'a.b?.c ?? d; e => e.f(); g::h<I>(); j->k; l...m; n!!o',
  'matrix = [[0]*10 for _ in range(10)]\nprint(matrix[3][4])',
  '@decorator\nclass Foo(Bar, metaclass=Meta):\n    __slots__ = ("a",)\n',
  '\\documentclass{article}\n\\begin{equation} E = mc^2 \\end{equation}',
  '// TODO(alice): fix O(n^2) -- see #1234\n/* block */',
  'git commit -m "fix: don\'t crash on empty input (#42)"',
];
const WORDS = [
  'the', 'quick', 'brown', 'fox', 'jumps', 'over', 'lazy', 'dog', 'Hello', 'world', "don't",
  "I'm", "we've", "they'll", 'McDonald\'s', 'naïve', 'café', 'résumé', 'Zürich', 'São',
  'Paulo', 'Ærøskøbing', 'straße', 'ĳssel', 'İstanbul', 'ǅemal', 'ﬁnance', 'Ωmega', 'KELVIN',
  'DeepSeek', 'tokenizer', 'GPT-4o', 'iPhone15', 'x86_64', 'UTF-8', 'e.g.', 'U.S.A.',
  'Привет', 'мир', 'Ελληνικά', 'λόγος', 'Հայերեն', 'ქართული', 'עברית', 'שלום', 'العربية',
  'مرحبا', 'بالعالم', 'हिन्दी', 'नमस्ते', 'संस्कृतम्', 'ภาษาไทย', 'สวัสดี', 'ትግርኛ', 'ᏣᎳᎩ',
  '中文', '你好世界', '機器學習', '深度求索', '𠀀𠀁', '日本語', 'ひらがな', 'カタカナ', 'ｶﾀｶﾅ',
  '東京タワー', 'こんにちは', '한국어', '안녕하세요', 'ㄱㄴㄷ', 'Tiếng Việt', 'người',
];
const EMOJI = [
  '😀', '👍🏽', '👨‍👩‍👧‍👦', '🧑🏿‍🚀', '🏳️‍🌈', '🇯🇵', '🇺🇸🇫🇷', '1️⃣', '#️⃣', '❤️', '🫠', '🦄',
  '👩‍💻', '🏴󠁧󠁢󠁳󠁣󠁴󠁿', '☕', '✅', '©️', '™', '⌘', '🀄', '🂡',
];
const PUNCT = [
  '...', '!!!', '?!', '—', '–', '«', '»', '“', '”', '‘', '’', '„', '…', '¡', '¿', '。', '、',
  '，', '！', '？', '：', '；', '（', '）', '【', '】', '《', '》', '・', '«»', '()', '[]', '{}',
  '<>', '&&', '||', '->', '=>', '::', '//', '/*', '*/', '##', '@@', '$$', '%%', '^_^', '~~~',
  '"', "'", '`', '\\', '|', '°', '±', '×', '÷', '€', '£', '¥', '$', '₿', '§', '¶', '†', '‰',
  '⁉', '‽', '‐', '‑', '״', '؟', '،', '।', '॥', '฿',
];
const SPACES = [
  ' ', '  ', '   ', '\t', '\t\t', '\n', '\n\n', '\r\n', '\r', ' \n', '\n ', ' \t\n',
  '\u00a0', '\u3000', '\u2003', '\u2009', '\u202f', '\u2028', '\u2029', '\ufeff', '\u200b',
  '\u000b', '\u000c', '\u0085', '\u1680',
];
const COMBINING = ['\u0301', '\u0300', '\u0308', '\u0327', '\u0323', '\u0332', '\u20dd',
                   '\u0489', '\u093c', '\u0e31', '\u302a', '\ufe0f', '\u200d'];

function digits(n, alphabet = '0123456789') {
  return repeat(n, () => alphabet[int(0, alphabet.length - 1)]);
}
function numberish() {
  switch (int(0, 9)) {
    case 0: return digits(int(1, 40));
    case 1: return digits(int(1, 7)) + '.' + digits(int(1, 9));
    case 2: return '-' + digits(int(1, 12)) + 'e' + digits(int(1, 3));
    case 3: return digits(int(1, 3)) + ',' + digits(3) + ',' + digits(3);
    case 4: return '0x' + digits(int(1, 16), '0123456789abcdefABCDEF');
    case 5: return digits(int(1, 12), '٠١٢٣٤٥٦٧٨٩');  // Arabic-Indic
    case 6: return digits(int(1, 12), '０１２３４５６７８９');  // fullwidth
    case 7: return digits(int(1, 6), '²³¹⁴½¼Ⅻ①⑩');  // other \p{N}
    case 8: return digits(int(1, 8), '०१२३४५६७८९');  // Devanagari
    default: return '(' + digits(3) + ') ' + digits(3) + '-' + digits(4);
  }
}
// A random code point from a block, never a surrogate or noncharacter-only gap.
const BLOCKS = [
  [0x20, 0x7e], [0xa0, 0x24f], [0x250, 0x36f], [0x370, 0x52f], [0x530, 0x6ff],
  [0x900, 0x0dff], [0xe00, 0xeff], [0x1100, 0x11ff], [0x1e00, 0x1fff], [0x2000, 0x206f],
  [0x2070, 0x2bff], [0x2e80, 0x2fdf], [0x3000, 0x30ff], [0x3100, 0x33ff], [0x3400, 0x4dbf],
  [0x4e00, 0x9fff], [0xa000, 0xa4cf], [0xa640, 0xabff], [0xac00, 0xd7a3], [0xf900, 0xfaff],
  [0xfb00, 0xfdff], [0xfe00, 0xfe6f], [0xff00, 0xffef], [0x10000, 0x1007f], [0x10400, 0x104ff],
  [0x1d400, 0x1d7ff], [0x1f300, 0x1faff], [0x20000, 0x2a6df], [0xe0000, 0xe007f],
];
function randomCodePoints(n) {
  let s = '';
  for (let i = 0; i < n; ++i) {
    const [lo, hi] = pick(BLOCKS);
    s += String.fromCodePoint(int(lo, hi));
  }
  return s;
}
function fragment() {
  switch (int(0, 12)) {
    case 0: return pick(WORDS);
    case 1: return pick(CODE);
    case 2: return pick(EMOJI);
    case 3: return pick(PUNCT);
    case 4: return pick(SPACES);
    case 5: return numberish();
    case 6: return pick(SPECIAL);
    case 7: return pick(WORDS) + pick(COMBINING);
    case 8: return randomCodePoints(int(1, 6));
    case 9: return String.fromCharCode(int(0x21, 0x7e)) + pick(WORDS);
    case 10: return pick(PUNCT) + pick(PUNCT) + pick(SPACES);
    default: return ' ' + pick(WORDS);
  }
}

function generate(count) {
  const out = [];
  const add = (s) => out.push(s);
  // Fixed cases first.
  add('');
  add(' ');
  add('Hello, world!');
  add('<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>Hi<｜Assistant｜>');
  for (let n = 1; n <= 64; ++n) add(digits(n));
  for (let n = 1; n <= 24; ++n) add('x' + ' '.repeat(n) + 'y' + '\n'.repeat(n % 5) + ' '.repeat(n % 3));
  for (const s of SPACES) add('a' + s + 'b' + s + s + '1' + s);
  for (const s of SPECIAL) add('text' + s + 'more ' + s + s + '\n' + s);
  for (const e of EMOJI) add('I ' + e + ' it' + e + e + '!');
  for (const c of CODE) add(c);
  for (const w of WORDS) add(w + ' ' + w.toUpperCase() + ', ' + w + '.');
  for (const c of COMBINING) add('e' + c + 'a' + c + c + ' ' + c + 'x 1' + c);
  add('a'.repeat(1000));
  add('ab'.repeat(700));
  add('中'.repeat(500));
  add(repeat(300, () => String.fromCharCode(int(0x61, 0x7a))));
  add(repeat(80, () => pick('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')) + '==');
  add('https://example.com/path/to/page?query=' + digits(30) + '&x=%E4%B8%AD#frag');
  add('Z̴̡̢̛̗͎͇͓̈́̊a̷͉͕̓l̵̝̈́g̸̯̈o̵͍̿');  // stacked combining marks
  add('\u0915\u094d\u0937\u093f \u0e01\u0e33 \u1100\u1161\u11a8');
  // Short strings over an alphabet of the characters the regexes treat
  // differently (CR/LF vs other spaces, marks, CJK vs kana, ASCII punctuation
  // before letters, special-token halves, \s oddities such as U+0085/U+FEFF).
  const TRICKY = [' ', ' ', '\n', '\r', '\t', 'a', 'Z', '1', '٣', '１', '.', "'", '-', '"',
                  '$', '_', '!', '\u0301', '\u0651', '中', 'ひ', 'ア', 'ー', 'ｶ', '가', 'م',
                  'Ω', 'ß', '\u3000', '\u00a0', '\u000b', '\u2028', '\u0085', '\ufeff',
                  '\u200d', '😀', '。', '、', '<｜', '｜>', '<｜User｜>'];
  for (let i = 0; i < 600; ++i) add(repeat(int(1, 12), () => pick(TRICKY)));
  // Random mixes.
  while (out.length < count) {
    const kind = int(0, 9);
    if (kind === 0) {
      add(randomCodePoints(int(1, 40)));
    } else if (kind === 1) {
      add(repeat(int(1, 30), () => String.fromCharCode(int(0x20, 0x7e))));
    } else if (kind === 2) {
      add(repeat(int(1, 12), () => pick(SPACES) + pick(WORDS)));
    } else {
      add(repeat(int(1, 16), fragment));
    }
  }
  return out;
}

const outPath = process.argv[2];
const count = Number(process.argv[3] || 3000);
if (!outPath) {
  process.stderr.write('usage: node make_corpus.js OUT.json [COUNT]\n');
  process.exit(2);
}
fs.writeFileSync(outPath, JSON.stringify(generate(count)));
