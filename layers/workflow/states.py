"""The vocabulary of the case workflow: states, actions, roles, scopes, nodes and their labels.

Everything here is plain data. The closed loop follows the 12345 guidance described in
DOMAIN.md::

    received ─dispatch─► dispatched ─sign─► signed ─start─► in_progress ─rectify─► rectified
        ▲                    │  ▲              │                 ▲                     │
        │                 return│redispatch  return        verify_fail (返工)     verify_pass
        │                    ▼  │              ▼                 │                     ▼
        │                  returned ◄──────────┘                 └──── rectified    verified
        │                                                                              │
    closed ◄─close─ return_visit ◄─return_visit─ feedback ◄─feedback────────────────────┘

Around the loop: extension requests (延期) and urging/supervision (催办/督办) change a clock or a
flag but not the state; ``merge`` ends a duplicate in its parent; ``reopen`` brings a closed case
back (a rebound, 反弹). Verification failure is an *action* (``verify_fail``), not a state: the
case simply goes back to ``in_progress`` and the event records why.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a case stands in the closed loop."""

    RECEIVED = "received"
    DISPATCHED = "dispatched"
    SIGNED = "signed"
    IN_PROGRESS = "in_progress"
    RECTIFIED = "rectified"
    VERIFIED = "verified"
    FEEDBACK = "feedback"
    RETURN_VISIT = "return_visit"
    CLOSED = "closed"
    RETURNED = "returned"
    MERGED = "merged"


#: States in which the case is still somebody's work (clocks can run, urging makes sense).
OPEN_STATES: frozenset[State] = frozenset(State) - {State.CLOSED, State.MERGED}
#: States that end the loop.
TERMINAL_STATES: frozenset[State] = frozenset({State.CLOSED, State.MERGED})


class Action(StrEnum):
    """What an actor (or the system) can do to a case; rows of ``data/transitions.csv``."""

    RECEIVE = "receive"  # intake: creates the case; not a row of the table
    DISPATCH = "dispatch"
    SIGN = "sign"
    RETURN = "return"
    START = "start"
    RECTIFY = "rectify"
    VERIFY_PASS = "verify_pass"
    VERIFY_FAIL = "verify_fail"
    FEEDBACK = "feedback"
    RETURN_VISIT = "return_visit"
    CLOSE = "close"
    EXTENSION_REQUEST = "extension_request"
    EXTENSION_APPROVE = "extension_approve"
    EXTENSION_REFUSE = "extension_refuse"
    URGE = "urge"
    SUPERVISE = "supervise"
    MERGE = "merge"
    REOPEN = "reopen"
    REOPEN_REDISPATCH = "reopen_redispatch"


class Role(StrEnum):
    """Platform roles (DESIGN.md), plus ``system`` for automatic actions such as escalation."""

    ADMIN = "admin"
    DISPATCHER = "dispatcher"
    LEADER = "leader"
    FIELD = "field"
    GIS = "gis"
    INSPECTOR = "inspector"
    PUBLIC = "public"
    SYSTEM = "system"


class Scope(StrEnum):
    """What an actor must hold over a case to perform a transition.

    ``none``: the role suffices. ``jurisdiction``: one of the actor's jurisdiction codes is the
    case's city, county or township code. ``body``: the case's responsible body is one of the
    actor's bodies (and, if the actor is bound to jurisdictions, one of them matches too — a
    county branch of a bureau does not act on another county's cases). ``assigned``: the actor is
    the case's assigned handler; while nobody is assigned yet, ``body`` scope is required instead.
    """

    NONE = "none"
    JURISDICTION = "jurisdiction"
    BODY = "body"
    ASSIGNED = "assigned"


class Node(StrEnum):
    """A timed step of the workflow; each has its own deadline rule (``data/deadline_rules.csv``).

    ``conclude`` is the case-level clock (办结时限) that runs in parallel with the step nodes from
    the first dispatch (acceptance) to closure. ``extension`` is not a clock: deadline rules with
    this node state the maximum extension for a regime.
    """

    ACCEPT = "accept"
    SIGN = "sign"
    ON_SITE = "on_site"
    HANDLE = "handle"
    VERIFY = "verify"
    FEEDBACK = "feedback"
    RETURN_VISIT = "return_visit"
    CONCLUDE = "conclude"
    EXTENSION = "extension"


#: The nodes that are steps of the loop: at most one of them runs at a time.
STEP_NODES: frozenset[Node] = frozenset(Node) - {Node.CONCLUDE, Node.EXTENSION}


STATE_LABELS: dict[State, str] = {
    State.RECEIVED: "已受理",
    State.DISPATCHED: "已派单",
    State.SIGNED: "已签收",
    State.IN_PROGRESS: "办理中",
    State.RECTIFIED: "已整改",
    State.VERIFIED: "核查通过",
    State.FEEDBACK: "已反馈",
    State.RETURN_VISIT: "已回访",
    State.CLOSED: "已办结",
    State.RETURNED: "已退单",
    State.MERGED: "已合并",
}

ACTION_LABELS: dict[Action, str] = {
    Action.RECEIVE: "受理",
    Action.DISPATCH: "派单",
    Action.SIGN: "签收",
    Action.RETURN: "退单",
    Action.START: "现场处置",
    Action.RECTIFY: "提交整改",
    Action.VERIFY_PASS: "核查通过",
    Action.VERIFY_FAIL: "核查不通过（返工）",
    Action.FEEDBACK: "反馈",
    Action.RETURN_VISIT: "回访",
    Action.CLOSE: "办结",
    Action.EXTENSION_REQUEST: "申请延期",
    Action.EXTENSION_APPROVE: "批准延期",
    Action.EXTENSION_REFUSE: "驳回延期",
    Action.URGE: "催办",
    Action.SUPERVISE: "督办",
    Action.MERGE: "合并",
    Action.REOPEN: "重新打开（返工）",
    Action.REOPEN_REDISPATCH: "重新打开（重新派单）",
}

ROLE_LABELS: dict[Role, str] = {
    Role.ADMIN: "管理员",
    Role.DISPATCHER: "派单员",
    Role.LEADER: "领导",
    Role.FIELD: "执法/网格员",
    Role.GIS: "GIS管理员",
    Role.INSPECTOR: "纪检监察",
    Role.PUBLIC: "公众",
    Role.SYSTEM: "系统",
}

NODE_LABELS: dict[Node, str] = {
    Node.ACCEPT: "受理",
    Node.SIGN: "签收",
    Node.ON_SITE: "到场",
    Node.HANDLE: "办理",
    Node.VERIFY: "核查",
    Node.FEEDBACK: "反馈",
    Node.RETURN_VISIT: "回访",
    Node.CONCLUDE: "办结",
    Node.EXTENSION: "延期",
}


class ReturnReason(StrEnum):
    """The fixed list of reasons for a return (退单); anything else is refused."""

    WRONG_JURISDICTION = "wrong_jurisdiction"
    WRONG_BODY = "wrong_body"
    DUPLICATE = "duplicate"
    INSUFFICIENT_INFORMATION = "insufficient_information"
    NOT_POLLUTION_MATTER = "not_pollution_matter"
    UNDER_OTHER_PROCEDURE = "under_other_procedure"
    CANNOT_LOCATE = "cannot_locate"


RETURN_REASONS: dict[ReturnReason, str] = {
    ReturnReason.WRONG_JURISDICTION: "非本辖区",
    ReturnReason.WRONG_BODY: "非本单位职责",
    ReturnReason.DUPLICATE: "重复件",
    ReturnReason.INSUFFICIENT_INFORMATION: "信息不全无法办理",
    ReturnReason.NOT_POLLUTION_MATTER: "非污染防治事项",
    ReturnReason.UNDER_OTHER_PROCEDURE: "已进入其他法定程序（诉讼、仲裁、复议）",
    ReturnReason.CANNOT_LOCATE: "地址不详无法找到现场",
}


class Satisfaction(StrEnum):
    """The complainant's answer at the return visit (回访)."""

    SATISFIED = "satisfied"
    BASICALLY_SATISFIED = "basically_satisfied"
    DISSATISFIED = "dissatisfied"
    NOT_REACHED = "not_reached"


SATISFACTION_LABELS: dict[Satisfaction, str] = {
    Satisfaction.SATISFIED: "满意",
    Satisfaction.BASICALLY_SATISFIED: "基本满意",
    Satisfaction.DISSATISFIED: "不满意",
    Satisfaction.NOT_REACHED: "未联系上",
}

#: Answers counted as satisfied in 满意度.
SATISFIED_ANSWERS: frozenset[Satisfaction] = frozenset(
    {Satisfaction.SATISFIED, Satisfaction.BASICALLY_SATISFIED}
)
