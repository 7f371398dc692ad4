{% macro header(this, kwargs) %}
<style>
  .leadgrid-box { background: rgba(255,255,255,0.94); padding: 8px 10px; border-radius: 6px;
    box-shadow: 0 1px 5px rgba(0,0,0,0.35); font: 13px/1.45 "Noto Sans CJK SC","WenQuanYi Micro Hei",
    "Microsoft YaHei","PingFang SC",sans-serif; color: #222; max-width: 300px; }
  .leadgrid-box h4 { margin: 0 0 6px; font-size: 14px; }
  .leadgrid-box .sw { display: inline-block; width: 14px; height: 14px; margin-right: 6px;
    vertical-align: -2px; border: 1px solid rgba(0,0,0,0.35); }
  .leadgrid-box .dot { border-radius: 50%; }
  .leadgrid-box .note { color: #555; font-size: 12px; margin-top: 4px; }
  .leadgrid-notice { background: #fff7d6; border: 1px solid #e0b400; font-size: 14px; max-width: 360px; }
  .leadgrid-box table { border-collapse: collapse; }
  .leadgrid-box td, .leadgrid-box th { padding: 1px 6px 1px 0; text-align: left; }
  .leadgrid-tip td, .leadgrid-tip th { padding: 0 6px 0 0; text-align: left; }
  .leaflet-container { background: #eef1f4; font-family: "Noto Sans CJK SC","WenQuanYi Micro Hei",
    "Microsoft YaHei","PingFang SC",sans-serif; }
  .leaflet-control-layers-list { max-height: 60vh; overflow-y: auto; }
</style>
{% endmacro %}
{% macro script(this, kwargs) %}
var {{ this.get_name() }} = (function () {
  var ctl = L.control({position: {{ this.position_json }}});
  ctl.onAdd = function () {
    var div = L.DomUtil.create("div", {{ this.css_class_json }});
    div.setAttribute("data-leadgrid", {{ this.role_json }});
    // the HTML was escaped on the server; it holds no user markup
    div.innerHTML = {{ this.get_name() }}_html;
    L.DomEvent.disableClickPropagation(div);
    return div;
  };
  ctl.addTo({{ this._parent.get_name() }});
  return ctl;
})();
{% endmacro %}
