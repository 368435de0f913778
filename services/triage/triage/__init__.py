"""triage (研判分流): decides which unit handles each appeal (category × location), opens its work order
(工单) with deadlines (限时办结), and follows it through acceptance, return, progress, resolution,
rating and rework until it is closed."""
