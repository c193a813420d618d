"""Plain OCR answers and key-information JSON answers, on hand-written answers shaped like the model's."""

import pytest

from qwen25vl.errors import InputError
from qwen25vl.tasks import KeyInfo, key_info_prompt, parse_key_info, parse_ocr

# ---- plain OCR ---------------------------------------------------------------------------------------------------

RECEIPT = ["CITY MARKET", "12 Main St.", "Total: $14.20", "Thank you!"]


@pytest.mark.parametrize("answer", [
    "CITY MARKET\n12 Main St.\n\nTotal: $14.20\nThank you!",
    "The text in the image reads:\n\nCITY MARKET\n12 Main St.\n\nTotal: $14.20\nThank you!\n",
    "The text in the image reads:\n\n```\nCITY MARKET\n12 Main St.\n\nTotal: $14.20\nThank you!\n```",
    "Sure! Here is the text extracted from the image:\n```plaintext\nCITY MARKET\n  12 Main St.  \n\n\nTotal: $14.20\n"
    "Thank you!\n```\nLet me know if you need anything else.",
    "Here's the text:\n   \nCITY MARKET\r\n12 Main St.\r\n\r\nTotal: $14.20\r\nThank you!",
    "Certainly! The image contains the following text:\nCITY MARKET\n12 Main St.\nTotal: $14.20\nThank you!",
])
def test_ocr_lines_without_lead_in_fences_or_blank_lines(answer):
    result = parse_ocr(answer)
    assert result.lines == RECEIPT and result.text == "\n".join(RECEIPT) and not result.truncated


@pytest.mark.parametrize("answer, lines", [
    ('The text in the image reads: "STOP".', ["STOP"]),
    ("The text in the image reads: OPEN 24 HOURS", ["OPEN 24 HOURS"]),
    ('The text reads "No parking"', ["No parking"]),
    ("“Welcome home”", ["Welcome home"]),
    ("Ingredients:\nFlour\nSugar", ["Ingredients:", "Flour", "Sugar"]),  # a colon line of the text itself stays
    ("The image shows a cat on a mat.", ["The image shows a cat on a mat."]),  # no lead-in colon: all is text
    ('"Quote" and more "words"', ['"Quote" and more "words"']),  # not one quoted string: quotes kept
    ("a < b > c & <i>x</i>", ["a < b > c & <i>x</i>"]),
    ("", []),
    ("\n\n  \n", []),
])
def test_ocr_one_line_answers_and_what_is_kept(answer, lines):
    assert parse_ocr(answer).lines == lines


def test_ocr_truncated_fence_and_several_fences():
    cut = parse_ocr("The text reads:\n```\nLINE ONE\nLINE TW")
    assert cut.lines == ["LINE ONE", "LINE TW"] and cut.truncated
    two = parse_ocr("Page 1:\n```\nA\n```\nPage 2:\n```\nB\n\nC\n```")
    assert two.lines == ["A", "B", "C"] and not two.truncated  # prose between fences is not image text
    assert two.to_json() == {"lines": ["A", "B", "C"], "truncated": False}


def test_ocr_needs_a_string():
    with pytest.raises(InputError, match="string"):
        parse_ocr(None)


# ---- key information -------------------------------------------------------------------------------------------

INVOICE = {"invoice_no": "INV-0042", "date": "2024-03-01", "total": "<$1,000>", "note": "qty > 5 -> discount",
           "items": [{"name": "bolt", "qty": 10}], "tax": None}
INVOICE_JSON = ('{"invoice_no": "INV-0042", "date": "2024-03-01", "total": "<$1,000>", "note": "qty > 5 -> discount", '
                '"items": [{"name": "bolt", "qty": 10}], "tax": null}')


@pytest.mark.parametrize("answer", [
    INVOICE_JSON,
    f"```json\n{INVOICE_JSON}\n```",
    f"Here is the extracted key information:\n\n```json\n{INVOICE_JSON}\n```\n\nAll fields were found.",
    f"The key information is as follows: {INVOICE_JSON}",
    "{'invoice_no': 'INV-0042', 'date': '2024-03-01', 'total': '<$1,000>', 'note': 'qty > 5 -> discount', "
    "'items': [{'name': 'bolt', 'qty': 10}], 'tax': None}",
])
def test_key_info_fenced_after_prose_or_python_literal(answer):
    info = parse_key_info(answer)
    assert info.fields == INVOICE and list(info.fields) == list(INVOICE) and not info.truncated
    assert info.get("total") == "<$1,000>" and info.get("missing", "-") == "-"


def test_key_info_keeps_markup_like_values_and_unicode():
    info = parse_key_info('```json\n{"发票代码": "<b>011002</b>", "比较": "a<b", "箭头": "=>"}\n```')
    assert info.fields == {"发票代码": "<b>011002</b>", "比较": "a<b", "箭头": "=>"}


def test_key_info_cut_off_keeps_the_finished_fields():
    info = parse_key_info('```json\n{"name": "Ann <ann@x.org>", "city": {"zip": "10115"}, "phone": "+49 30')
    assert info.truncated and info.fields == {"name": "Ann <ann@x.org>", "city": {"zip": "10115"}}
    cut_in_key = parse_key_info('Result: {"a": 1, "b')
    assert cut_in_key.truncated and cut_in_key.fields == {"a": 1} and cut_in_key.prose == "Result:"
    assert parse_key_info('{note} then {"a": 1, "b": 2').fields == {"a": 1, "b": 2}  # the unclosed object


def test_key_info_from_a_list_of_pairs_or_objects():
    pairs = parse_key_info('[{"key": "Name", "value": "X"}, {"key": "Age", "value": 3}]')
    assert pairs.fields == {"Name": "X", "Age": 3}
    objects = parse_key_info('[{"a": 1}, {"b": 2}]')
    assert objects.fields == {"a": 1, "b": 2}


@pytest.mark.parametrize("garbage", ["", "I could not find an invoice number.", "[1, 2, 3]", "{{{{", "```json\n```",
                                     '{"a": ' * 2000])
def test_key_info_garbage_gives_no_fields(garbage):
    info = parse_key_info(garbage)
    assert isinstance(info, KeyInfo) and info.fields == {}


def test_key_info_prompt_lists_the_keys_as_a_json_template():
    prompt = key_info_prompt(["company", "日期"])
    assert prompt.startswith('Extract the key-value information in the format: {"company": "", "日期": ""}')
    with pytest.raises(InputError, match="key names"):
        key_info_prompt([])
    with pytest.raises(InputError, match="string"):
        parse_key_info(b"{}")
