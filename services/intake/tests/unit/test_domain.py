from datetime import datetime

from intake import domain
from intake.schemas import id_number_is_valid


def test_case_no_is_date_and_sequence():
    assert domain.case_no_for(datetime(2026, 11, 25), 123) == "YC20261125000123"


def test_masks():
    assert domain.mask_phone("13812345678") == "138****5678"
    assert domain.mask_name("欧阳修") == "欧**"
    assert domain.mask_id_number("11010519491231002X") == "1101**********002X"


def test_citizen_ref_is_keyed_and_prefers_the_id_number():
    a = domain.citizen_ref("key-a", "13812345678")
    assert a != domain.citizen_ref("key-b", "13812345678")
    assert "13812345678" not in a
    assert domain.citizen_ref("k", "13812345678", "11010519491231002x") == \
        domain.citizen_ref("k", "13900000000", "11010519491231002X")
    assert domain.citizen_ref("k") is None


def test_id_number_check_digit():
    assert id_number_is_valid("11010519491231002X")
    assert not id_number_is_valid("110105194912310021")
    assert not id_number_is_valid("1101051949123100")


def test_personal_data_written_into_the_text_is_redacted_for_events():
    text = "我叫张三丰，电话13812345678，座机0632-7712345，身份证11010519491231002X，门牌号123号。"
    redacted = domain.redact_text(text, {"name": "张三丰"})
    for secret in ("张三丰", "13812345678", "0632-7712345", "11010519491231002X"):
        assert secret not in redacted
    assert "门牌号123号" in redacted and "张**" in redacted
