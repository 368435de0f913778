"""Lookups of work orders shared by the unit's actions (handlers) and the supervision zone
(supervision): one place for "this order, and only if it is this unit's" and for the fields every
order event starts with."""
from sqlalchemy import select

from triage.models import WorkOrder
from wuji_common.errors import NotFound, NotYourOrder


def order_for_unit(s, order_no, unit_code):
    """The order, if it is routed to ``unit_code``: NotFound or NotYourOrder otherwise."""
    order = s.execute(select(WorkOrder).where(WorkOrder.order_no == order_no)).scalar_one_or_none()
    if order is None:
        raise NotFound(f"工单 {order_no} 不存在")
    if order.unit_code != unit_code:
        raise NotYourOrder(f"工单 {order_no} 未派给 {unit_code}")
    return order


def event_base(order):
    """The fields every order event carries (wuji_common.events.OrderEvent)."""
    return {"order_no": order.order_no, "unit_code": order.unit_code, "town_code": order.town_code,
            "category": order.category, "status": order.status}
