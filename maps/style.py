"""Map style as data: colours per class and the labels of every map, Chinese by default.

Colours are chosen to be told apart on a projector and by colour-blind readers where it matters:
hot/cold spots use Esri's diverging red-blue ramp, statuses group by workflow stage (blue = waiting
for the body, orange = being handled, green = done, purple = sent back).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CATEGORY_GROUP_COLORS",
    "HOTSPOT_COLORS",
    "LABELS",
    "MONITORING_COLORS",
    "SEQUENTIAL",
    "STATUSES",
    "STATUS_COLORS",
    "Lang",
    "LanguageError",
    "label",
    "parse_lang",
]


class Lang(StrEnum):
    """Language of labels, legends and popups."""

    ZH = "zh"
    EN = "en"


class LanguageError(ValueError):
    """An unknown language code."""


def parse_lang(lang: str | Lang) -> Lang:
    """Validate a language code.

    Parameters
    ----------
    lang : str or Lang
        ``'zh'`` (default everywhere) or ``'en'``.

    Returns
    -------
    Lang

    Raises
    ------
    LanguageError
        Any other value.
    """
    try:
        return Lang(lang)
    except ValueError:
        raise LanguageError(f"lang={lang!r} is not supported; allowed: {[x.value for x in Lang]}") from None


#: Disposal statuses in workflow order; anything else is shown as 'other'.
STATUSES: tuple[str, ...] = (
    "received",
    "dispatched",
    "signed",
    "in_progress",
    "rectified",
    "verified",
    "closed",
    "returned",
    "other",
)

STATUS_COLORS: dict[str, str] = {
    "received": "#1f78b4",
    "dispatched": "#6baed6",
    "signed": "#fd8d3c",
    "in_progress": "#e6550d",
    "rectified": "#a1d99b",
    "verified": "#41ab5d",
    "closed": "#006d2c",
    "returned": "#8856a7",
    "other": "#969696",
}

#: Gi_Bin -3..3 (Esri Optimized Hot Spot Analysis palette).
HOTSPOT_COLORS: dict[int, str] = {
    -3: "#4575b5",
    -2: "#849eba",
    -1: "#c0ccbe",
    0: "#f2f2e6",
    1: "#fab984",
    2: "#ed7551",
    3: "#d62f27",
}

CATEGORY_GROUP_COLORS: dict[str, str] = {
    "air": "#9ecae1",
    "water": "#3182bd",
    "soil": "#a6761d",
    "noise": "#e7298a",
    "solid_waste": "#666666",
    "ecology": "#1b9e77",
    "other": "#bdbdbd",
}

MONITORING_COLORS: dict[str, str] = {
    "normal": "#2ca25f",
    "exceeding": "#de2d26",
    "missing": "#fd8d3c",
    "offline": "#737373",
}

#: Light-to-dark ramp for counts and rates (5 classes).
SEQUENTIAL: tuple[str, ...] = ("#fff5eb", "#fdd0a2", "#fd8d3c", "#d94801", "#7f2704")

LABELS: dict[str, dict[str, str]] = {
    # statuses
    "received": {"zh": "已受理", "en": "Received"},
    "dispatched": {"zh": "已派发", "en": "Dispatched"},
    "signed": {"zh": "已签收", "en": "Signed"},
    "in_progress": {"zh": "处置中", "en": "In progress"},
    "rectified": {"zh": "已整改", "en": "Rectified"},
    "verified": {"zh": "已核查", "en": "Verified"},
    "closed": {"zh": "已办结", "en": "Closed"},
    "returned": {"zh": "已退回", "en": "Returned"},
    "other": {"zh": "其他", "en": "Other"},
    # category groups
    "air": {"zh": "大气", "en": "Air"},
    "water": {"zh": "水", "en": "Water"},
    "soil": {"zh": "土壤", "en": "Soil"},
    "noise": {"zh": "噪声", "en": "Noise"},
    "solid_waste": {"zh": "固废", "en": "Solid waste"},
    "solid": {"zh": "固废", "en": "Solid waste"},
    "ecology": {"zh": "生态", "en": "Ecology"},
    # monitoring
    "normal": {"zh": "正常", "en": "Normal"},
    "exceeding": {"zh": "超标", "en": "Exceeding"},
    "missing": {"zh": "数据缺失", "en": "Data missing"},
    "offline": {"zh": "离线", "en": "Offline"},
    # fields
    "code": {"zh": "编号", "en": "Code"},
    "category": {"zh": "类别", "en": "Category"},
    "status": {"zh": "状态", "en": "Status"},
    "deadline": {"zh": "办理时限", "en": "Deadline"},
    "body": {"zh": "责任主体", "en": "Responsible body"},
    "description": {"zh": "描述", "en": "Description"},
    "address": {"zh": "地址", "en": "Address"},
    "channel": {"zh": "来源渠道", "en": "Channel"},
    "count": {"zh": "线索数", "en": "Leads"},
    "distance": {"zh": "距离", "en": "Distance"},
    "navigate": {"zh": "导航", "en": "Navigate"},
    "open": {"zh": "未办结", "en": "Open"},
    "overdue": {"zh": "超期", "en": "Overdue"},
    "on_time_rate": {"zh": "按期办结率", "en": "On-time closure rate"},
    "rebound": {"zh": "反弹", "en": "Rebounds"},
    "name": {"zh": "名称", "en": "Name"},
    "latest": {"zh": "最新读数", "en": "Latest reading"},
    "time": {"zh": "时间", "en": "Time"},
    "none": {"zh": "无", "en": "None"},
    # layers and titles
    "boundaries": {"zh": "行政边界", "en": "Boundaries"},
    "leads": {"zh": "线索", "en": "Leads"},
    "layer_body": {"zh": "责任主体", "en": "Body"},
    "layer_group": {"zh": "类别", "en": "Category"},
    "township_counts": {"zh": "乡镇线索数", "en": "Leads per township"},
    "legend_status": {"zh": "处置状态", "en": "Disposal status"},
    "heat": {"zh": "热力图（核密度）", "en": "Heat (kernel density)"},
    "hot_townships": {"zh": "乡镇热点", "en": "Township hot spots"},
    "hot_grid": {"zh": "网格热点", "en": "Grid hot spots"},
    "legend_hotspot": {"zh": "热点分析（Gi*，FDR 校正）", "en": "Hot spots (Gi*, FDR corrected)"},
    "hot_99": {"zh": "热点 99% 置信", "en": "Hot spot, 99 % confidence"},
    "hot_95": {"zh": "热点 95% 置信", "en": "Hot spot, 95 % confidence"},
    "hot_90": {"zh": "热点 90% 置信", "en": "Hot spot, 90 % confidence"},
    "not_sig": {"zh": "不显著", "en": "Not significant"},
    "cold_90": {"zh": "冷点 90% 置信", "en": "Cold spot, 90 % confidence"},
    "cold_95": {"zh": "冷点 95% 置信", "en": "Cold spot, 95 % confidence"},
    "cold_99": {"zh": "冷点 99% 置信", "en": "Cold spot, 99 % confidence"},
    "too_few": {
        "zh": "要素过少（{n} 个，至少需要 {min} 个），无法进行有统计意义的热点分析。",
        "en": "Too few features ({n}; at least {min} needed) for a meaningful hot spot analysis.",
    },
    "cell_size": {"zh": "网格边长", "en": "Cell size"},
    "staff": {"zh": "我的位置", "en": "My position"},
    "radius": {"zh": "搜索半径", "en": "Search radius"},
    "nearby_cases": {"zh": "附近案件", "en": "Cases nearby"},
    "no_cases": {"zh": "范围内没有案件", "en": "No cases within the radius"},
    "monitoring": {"zh": "监测点", "en": "Monitoring points"},
    "legend_monitoring": {"zh": "监测点状态", "en": "Monitoring status"},
    "status_map": {"zh": "处置状况", "en": "Disposal status"},
    "worst_body": {"zh": "滞后责任主体", "en": "Lagging body"},
    "overdue_share": {"zh": "超期率（超期 / 未办结）", "en": "Overdue rate (Overdue / Open)"},
    "city_total": {"zh": "合计", "en": "Total"},
    "no_deadlines": {
        "zh": "未办结线索均无办理时限，无法判断超期。",
        "en": "No open lead has a deadline, so nothing can be judged overdue.",
    },
    "no_points": {"zh": "范围内没有监测点。", "en": "No monitoring points in your scope."},
}


def label(key: str, lang: str | Lang = Lang.ZH) -> str:
    """The label of ``key`` in ``lang``; unknown keys are returned unchanged (data values).

    Parameters
    ----------
    key : str
        A key of :data:`LABELS`, or any other text (returned as is).
    lang : str or Lang, default 'zh'

    Returns
    -------
    str
    """
    entry = LABELS.get(key)
    return entry[parse_lang(lang).value] if entry else key
