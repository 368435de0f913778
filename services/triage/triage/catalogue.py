"""The service catalogue (事项目录) as outside systems read it: every item of the taxonomy an appeal can
be routed as, with its category, handling level, responsible department and time limits.

Read-only, from the taxonomy the router uses, so that intake's Open311 ``GET services`` and a
department's own forms offer exactly the items triage routes to."""
from sqlalchemy import select

from triage.models import Unit


def _limit(limit):
    return {"accept_hours": limit.accept_hours, "resolve_hours": limit.resolve_hours}


def _policy(policies, item, urgency):
    policy = policies.pick(item.code, item.category, urgency)
    return {"code": policy.code, "name": policy.name, "version": policy.version, **policy.describe()}


def services_catalogue(uow, taxonomy, policies=None):
    """``{"taxonomy_version", "categories": [{code, name}], "items": [...]}``; items in the file's order,
    each with code, name, category, category_name, level, department (+ its name), co_handlers,
    keywords, default (the category's default item), the taxonomy's time_limit ``{normal, urgent}``
    in hours and, when the time-limit policies (policies.yml) are in force, ``time_policy``
    ``{normal, urgent}``: the policy an order of the item gets (code, name, version, report_in,
    first_contact, resolve, extension_max as "<amount> <unit>")."""
    codes = {i.department for i in taxonomy.items.values() if i.department}
    with uow:
        names = dict(uow.session.execute(select(Unit.code, Unit.name).where(Unit.code.in_(codes))).all())
    items = []
    for category in taxonomy.categories.values():
        for item in category.items:
            items.append({
                "code": item.code, "name": item.name, "category": category.code,
                "category_name": category.name, "level": item.level, "department": item.department,
                "department_name": names.get(item.department), "co_handlers": list(item.co_handlers),
                "keywords": list(item.keywords), "default": item.code == category.default_item,
                "time_limit": {"normal": _limit(item.policy.normal), "urgent": _limit(item.policy.urgent)},
                "time_policy": {"normal": _policy(policies, item, "normal"),
                                "urgent": _policy(policies, item, "urgent")} if policies else None,
            })
    return {"taxonomy_version": taxonomy.version,
            "categories": [{"code": c.code, "name": c.name} for c in taxonomy.categories.values()],
            "items": items}
