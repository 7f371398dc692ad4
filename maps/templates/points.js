{% macro script(this, kwargs) %}
var {{ this.get_name() }} = (function () {
  var data = {{ this.get_name() }}_data;
  var group = L.featureGroup();
  for (var i = 0; i < data.length; i++) {
    var d = data[i];
    var mk = L.circleMarker([d.lat, d.lon], {
      radius: d.r, color: d.stroke || "#ffffff", weight: d.w || 1.5,
      fillColor: d.c, fillOpacity: 0.95
    });
    // popup/tooltip HTML is built and escaped on the server (maps.canvas.popup_table)
    if (d.p) { mk.bindPopup(d.p, {maxWidth: 320}); }
    if (d.t) { mk.bindTooltip(d.t); }
    mk.addTo(group);
  }
  {% if this.show %}group.addTo({{ this._parent.get_name() }});{% endif %}
  return group;
})();
{% endmacro %}
