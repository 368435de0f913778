"""The read-only service catalogue (事项目录) that intake's Open311 GET services is built from."""
from triage.catalogue import services_catalogue
from triage.dependencies import load_policies, load_taxonomy


def test_catalogue_lists_every_item_with_its_category_department_and_limits(triage_db):
    _, uow = triage_db
    taxonomy = load_taxonomy()
    catalogue = services_catalogue(uow(), taxonomy)
    assert catalogue["taxonomy_version"] == taxonomy.version
    assert [i["code"] for i in catalogue["items"]] == list(taxonomy.items)
    road = next(i for i in catalogue["items"] if i["code"] == "road-damage")
    assert road["category"] == "urban-rural" and road["category_name"] == "城乡建设"
    assert road["level"] == "town" and road["department_name"] == "区住房和城乡建设局"
    assert road["time_limit"]["normal"] == {"accept_hours": 2.0, "resolve_hours": 72.0}
    assert road["time_limit"]["urgent"] == {"accept_hours": 0.5, "resolve_hours": 12.0}
    assert "坑洼" in road["keywords"] and road["default"] is False
    assert {c["code"] for c in catalogue["categories"]} == set(taxonomy.categories)


def test_catalogue_gives_the_time_limit_policy_an_order_of_each_item_gets(triage_db):
    _, uow = triage_db
    taxonomy = load_taxonomy()
    items = {i["code"]: i for i in services_catalogue(uow(), taxonomy, load_policies(None, taxonomy))["items"]}
    assert items["road-damage"]["time_policy"]["normal"]["resolve"] == "7 working_days"
    assert items["road-damage"]["time_policy"]["normal"]["name"] == "一般类"
    assert items["road-damage"]["time_policy"]["urgent"]["resolve"] == "2 hours"
    assert items["water-supply"]["time_policy"]["normal"]["code"] == "utilities"
