"""notify (消息通知): tells the citizen (受理回执, 办结结果与评价邀请) and the handling unit (派单通知,
返工通知) by e-mail and signed webhooks. Exactly one delivery per (event, recipient, channel) is
recorded before anything is sent; the citizen's contact is looked up from intake at send time and
never stored here."""
