"""HTML -> text keeps every kind of math markup and drops boilerplate."""

from lxml import etree

from dsm_engine.data_pipeline.extract import extract_text
from dsm_engine.data_pipeline.mathml import mathml_to_latex


def page(body: str) -> str:
    return (
        "<html><head><title>t</title><script>var a = 1;</script><style>p{}</style></head><body>"
        '<nav class="menu"><a href="/">Home</a> <a href="/x">Blog</a></nav>'
        f"<main>{body}</main><footer>Copyright 2024 Example</footer></body></html>"
    )


def mathml(xml: str) -> str:
    return mathml_to_latex(etree.fromstring(f"<math>{xml}</math>"))


def test_frac_in_dollars_survives_verbatim():
    text = extract_text(
        page(r"<p>We get $\frac{a}{b}$ and $$\frac{1}{2}$$ and \(x^2\) and \[y_1\].</p>")
    ).text
    assert r"$\frac{a}{b}$" in text
    assert r"$$\frac{1}{2}$$" in text
    assert r"\(x^2\)" in text and r"\[y_1\]" in text


def test_mathjax_script_becomes_latex_and_preview_is_dropped():
    html = page(
        '<p>Roots: <span class="MathJax_Preview">garbled</span><script type="math/tex">x = \\frac{-b}{2a}</script>.</p>'
        '<p><script type="math/tex; mode=display">\\int_0^1 x\\,dx</script></p>'
    )
    result = extract_text(html)
    assert r"$x = \frac{-b}{2a}$" in result.text
    assert "$$\\int_0^1 x\\,dx$$" in result.text
    assert "garbled" not in result.text and "var a" not in result.text
    assert result.math_from_markup == 2


def test_katex_keeps_annotation_once_and_drops_rendered_copy():
    html = page(
        '<p>A <span class="katex"><span class="katex-mathml"><math><semantics><mfrac><mi>a</mi><mi>b</mi></mfrac>'
        '<annotation encoding="application/x-tex">\\frac{a}{b}</annotation></semantics></math></span>'
        '<span class="katex-html" aria-hidden="true"><span class="mord">ab</span></span></span> ratio.</p>'
    )
    text = extract_text(html).text
    assert text.count(r"\frac{a}{b}") == 1
    assert "ab ratio" not in text and r"A $\frac{a}{b}$ ratio." in text


def test_mathml_without_annotation_is_converted():
    html = page(
        "<p>So <math><mfrac><mrow><mi>x</mi><mo>+</mo><mn>1</mn></mrow><mn>2</mn></mfrac></math> holds.</p>"
    )
    assert r"$\frac{x+1}{2}$" in extract_text(html).text


def test_mathml_elements_map_to_latex():
    assert mathml("<mfrac><mi>a</mi><mi>b</mi></mfrac>") == r"\frac{a}{b}"
    assert mathml("<msup><mi>x</mi><mn>2</mn></msup>") == "x^{2}"
    assert mathml("<msub><mi>a</mi><mi>n</mi></msub>") == "a_{n}"
    assert mathml("<msubsup><mi>x</mi><mi>i</mi><mn>2</mn></msubsup>") == "x_{i}^{2}"
    assert mathml("<msqrt><mn>2</mn></msqrt>") == r"\sqrt{2}"
    assert mathml("<mroot><mi>x</mi><mn>3</mn></mroot>") == r"\sqrt[3]{x}"
    assert mathml("<mfenced><mi>a</mi><mi>b</mi></mfenced>") == r"\left(a,b\right)"
    assert (
        mathml(
            "<munderover><mo>∑</mo><mrow><mi>i</mi><mo>=</mo><mn>1</mn></mrow><mi>n</mi></munderover>"
        )
        == r"\sum_{i=1}^{n}"
    )
    assert mathml("<mover><mi>x</mi><mo>¯</mo></mover>") == r"\overline{x}"
    assert mathml("<mrow><mi>α</mi><mo>≤</mo><mi>π</mi></mrow>") == r"\alpha\le\pi"
    assert mathml("<mrow><mi>sin</mi><mi>x</mi></mrow>") == r"\sin x"


def test_tex_annotation_is_preferred_over_presentation_mathml():
    xml = '<semantics><mi>wrong</mi><annotation encoding="application/x-tex">\\binom{n}{k}</annotation></semantics>'
    assert mathml(xml) == r"\binom{n}{k}"


def test_latex_image_alt_text_is_kept_and_plain_alt_is_not():
    html = page(
        '<p>Here <img class="latex" src="https://s0.wp.com/latex.php?latex=x" alt="\\frac{p}{q}"> is it.'
        ' <img src="/photo_of_me.jpg" alt="photo_of_me.jpg"> <img src="/logo.png" alt="Company logo"></p>'
    )
    text = extract_text(html).text
    assert r"$\frac{p}{q}$" in text
    assert "Company logo" not in text and "photo_of_me" not in text


def test_boilerplate_and_link_lists_are_dropped():
    html = page(
        "<p>The main text of the page stays.</p>"
        '<div class="sidebar-widget">Popular posts</div><div class="cookie-banner">We use cookies</div>'
        '<ul><li><a href="/1">First link</a></li><li><a href="/2">Second link</a></li></ul>'
        "<form><input name=q><button>Search</button></form>"
    )
    text = extract_text(html).text
    assert text == "The main text of the page stays."


def test_markup_is_found_whatever_its_case_quoting_or_escaping():
    # the raw-HTML prefilter in front of each tree query must not miss what the query matches
    html = page(
        "<p>Kept text.</p><DIV CLASS='intro Sidebar-Box'>Popular posts</DIV>"
        "<div class=newsletter>Sign up</div>"
        '<P>Root <IMG SRC="/eq.png" ALT="&#92;sqrt{2}"> and <MATH><MI>x</MI></MATH>'
        ' and <SCRIPT TYPE="Math/TeX">y^2</SCRIPT>.</P>'
    )
    result = extract_text(html)
    assert result.text == "Kept text.\nRoot $\\sqrt{2}$ and $x$ and $y^2$."
    assert result.math_from_markup == 3


def test_a_mathjax_container_is_found_on_a_page_that_never_says_math():
    # MathJax 3's rendered copy without its assistive MathML: the glyphs are no formula
    html = page("<p>Area <mjx-container><mjx-c>glyph</mjx-c></mjx-container> done.</p>")
    assert extract_text(html).text == "Area done."


def test_empty_and_garbage_html_give_empty_text():
    assert extract_text("").text == ""
    assert extract_text("   ").text == ""
    assert extract_text("<html><body></body></html>").text == ""
    assert (
        extract_text(
            '<?xml version="1.0" encoding="utf-8"?><html><body><p>ok</p></body></html>'
        ).text
        == "ok"
    )


def test_deeply_nested_page_does_not_overflow_the_stack():
    html = (
        "<html><body>" + "<div>" * 1500 + "<p>deep $x^2$</p>" + "</div>" * 1500 + "</body></html>"
    )
    assert "deep $x^2$" in extract_text(html).text
