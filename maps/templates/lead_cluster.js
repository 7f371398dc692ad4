{% macro script(this, kwargs) %}
var {{ this.get_name() }} = (function () {
  var map = {{ this._parent.get_name() }};
  var P = {{ this.get_name() }}_payload;
  var n = P.n;
  // Columns are little-endian unsigned integers, base64 (maps/payload.py pack_uint).
  function col(c) {
    var bin = atob(c.b), w = c.w, out = new Float64Array(n);
    for (var i = 0, k = 0; i < n; i++, k += w) {
      var v = 0, m = 1;
      for (var j = 0; j < w; j++) { v += bin.charCodeAt(k + j) * m; m *= 256; }
      out[i] = v;
    }
    return out;
  }
  var lat = col(P.lat), lon = col(P.lon), st = col(P.status), body = col(P.body),
      grp = col(P.group), cat = col(P.category), cpre = col(P.code_prefix),
      cnum = col(P.code_number), dl = col(P.deadline);
  var texts = P.texts.map(function (t) { return {label: t.label, dict: t.dict, idx: col(t.col)}; });
  var icons = P.status_colors.map(function (c) {
    return L.divIcon({className: "leadgrid-pin", iconSize: [12, 12],
      html: '<span style="background:' + c + '"></span>'});
  });
  var markers = new Array(n);
  for (var i = 0; i < n; i++) {
    markers[i] = L.marker([P.lat.o + lat[i] * P.lat.s, P.lon.o + lon[i] * P.lon.s],
                          {icon: icons[st[i]], lg: i});
  }
  function pad(v, w) { var s = String(v); while (s.length < w) { s = "0" + s; } return s; }
  function code(i) {
    var p = P.code_prefixes[cpre[i]];
    // the tail is upper-case hex (maps/distribution.py _split_codes)
    return p[0] + (p[1] > 0 ? pad(cnum[i].toString(16).toUpperCase(), p[1]) : "");
  }
  function deadline(i) {
    if (dl[i] === 0) { return P.labels.none; }
    // minutes since P.deadline_base (UTC ms), shown in Asia/Shanghai (UTC+8, no DST)
    var d = new Date(P.deadline_base + (dl[i] - 1) * 60000 + 8 * 3600000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1, 2) + "-" + pad(d.getUTCDate(), 2) +
      " " + pad(d.getUTCHours(), 2) + ":" + pad(d.getUTCMinutes(), 2);
  }
  function popup(i) {
    var rows = [[P.labels.code, code(i)], [P.labels.category, P.categories[cat[i]]],
                [P.labels.status, P.status_labels[st[i]]], [P.labels.deadline, deadline(i)],
                [P.labels.body, P.bodies[body[i]]]];
    texts.forEach(function (t) { var v = t.dict[t.idx[i]]; if (v) { rows.push([t.label, v]); } });
    // DOM nodes filled with textContent: no user text is ever parsed as HTML.
    var div = document.createElement("div"), table = document.createElement("table");
    div.className = "leadgrid-tip";
    rows.forEach(function (r) {
      var tr = table.insertRow(), th = document.createElement("th");
      th.textContent = r[0];
      tr.appendChild(th);
      tr.insertCell().textContent = r[1];
    });
    div.appendChild(table);
    return div;
  }
  function ready() { map.getContainer().setAttribute("data-leadgrid-ready", "1"); }
  // Clusters are neutral slate discs: the default green/yellow/orange-by-size would read as the
  // status colours (green = closed), which is exactly what a cluster does not say.
  function clusterIcon(c) {
    var k = c.getChildCount(), s = k < 10 ? 26 : k < 100 ? 32 : k < 1000 ? 38 : 44;
    return L.divIcon({className: "marker-cluster leadgrid-cluster", iconSize: [s, s],
      html: '<span style="width:' + s + 'px;height:' + s + 'px;line-height:' + s + 'px">' +
            (k >= 10000 ? Math.round(k / 1000) + "k" : k) + "</span>"});
  }
  var cluster = L.markerClusterGroup({chunkedLoading: true, maxClusterRadius: 60,
    showCoverageOnHover: false, iconCreateFunction: clusterIcon,
    chunkProgress: function (done, total) { if (done === total) { ready(); } }});
  // One popup object on demand instead of 100,000 bound popups.
  cluster.on("click", function (e) {
    L.popup({maxWidth: 340}).setLatLng(e.layer.getLatLng()).setContent(popup(e.layer.options.lg))
      .openOn(map);
  });
  var bodyLayers = [{% for ln in this.body_layers %}{{ ln }}{{ "," if not loop.last }}{% endfor %}];
  var groupLayers = [{% for ln in this.group_layers %}{{ ln }}{{ "," if not loop.last }}{% endfor %}];
  function refresh() {
    var bodyOn = bodyLayers.map(function (l) { return map.hasLayer(l); });
    var groupOn = groupLayers.map(function (l) { return map.hasLayer(l); });
    var keep = [];
    for (var i = 0; i < n; i++) {
      if (bodyOn[body[i]] && groupOn[grp[i]]) { keep.push(markers[i]); }
    }
    cluster.clearLayers();
    if (keep.length === 0) { ready(); }
    cluster.addLayers(keep);
    map.getContainer().setAttribute("data-leads-shown", String(keep.length));
  }
  map.on("overlayadd overlayremove", refresh);
  cluster.addTo(map);
  refresh();
  return cluster;
})();
{% endmacro %}
{% macro header(this, kwargs) %}
<style>
  .leadgrid-cluster span { display: block; border-radius: 50%; text-align: center; color: #fff;
    font: bold 12px/1 sans-serif; background: rgba(55, 71, 79, 0.88);
    box-shadow: 0 0 0 4px rgba(55, 71, 79, 0.25); }
  .leadgrid-pin span { display: block; width: 12px; height: 12px; border-radius: 50%;
    border: 1.5px solid #fff; box-shadow: 0 0 2px rgba(0,0,0,0.6); box-sizing: border-box; }
</style>
{% endmacro %}
