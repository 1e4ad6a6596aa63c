"""The shipments table: each dispatch's context, and the outcomes that context causes.

Every outcome (delay, fuel, cost, condition, incident, rating, risk, and the hindsight
choices) is a function of the context columns plus noise, so a model can learn it and a
drift scenario can break it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from backend.ml.data.synthetic.world import (
    DESTINATIONS,
    MATERIALS,
    DayContext,
    World,
    pick,
)

# Route 1 is the direct road (short, traffic-prone); 2 the highway (rain-proof);
# 3 the bypass (longest, avoids festival towns).
ROUTE_KM_FACTOR = np.array([1.0, 1.08, 1.15])
RAIL_WAGON_FOR = {"HR_COIL": "BCN", "CR_COIL": "BCN", "WIRE_ROD": "BCN", "PLATE": "BOST",
                  "TMT_BAR": "BRN", "BILLET": "BRN", "PIG_IRON": "BOXN"}
RAIL_WAGONS = ["BOXN", "BCN", "BOBRN", "BRN", "BOST"]
ROAD_VEHICLES = ["TRUCK_16T", "TRAILER_28T"]
PREFERRED_LP = {"HR_COIL": "LP1", "CR_COIL": "LP1", "PLATE": "LP2", "TMT_BAR": "LP2",
                "WIRE_ROD": "LP3", "BILLET": "LP3", "PIG_IRON": "WT"}
RAIL_TRANSPORTER = "Indian Railways (ECR)"
# port_export_push: the share of consignments the export contract sends to the ports.
PORT_SHARE = 0.25
PORTS = ["Visakhapatnam", "Haldia", "Kolkata"]
PORT_WEIGHTS = [0.5, 0.3, 0.2]


def make_shipments(ctx: DayContext, world: World, rng: np.random.Generator,
                   per_day: int) -> pd.DataFrame:
    counts = rng.poisson(per_day * np.where(ctx.days.day_of_week == 6, 0.7, 1.05), len(ctx.days))
    day_idx = np.repeat(np.arange(len(ctx.days)), counts)
    n = len(day_idx)
    cust = world.customers
    ci = rng.choice(len(cust), n, p=(cust.weight / cust.weight.sum()).to_numpy())
    customer = cust.customer.to_numpy()[ci]
    segment = cust.segment.to_numpy()[ci]
    roll = rng.random(n)
    material = np.where(roll < 0.8, cust.primary.to_numpy()[ci],
                        np.where(roll < 0.92, cust.secondary.to_numpy()[ci],
                                 rng.choice(MATERIALS, n)))
    dest_names = np.array(list(DESTINATIONS))
    destination = np.where(rng.random(n) < 0.7, cust.home.to_numpy()[ci],
                           rng.choice(dest_names, n))
    if ctx.scenario is not None and ctx.scenario.name == "port_export_push":
        # Only the destination moves; everything drawn after it still comes from the calm
        # stream, so the same days hold the same shipments sent elsewhere.
        drift = ctx.drift_draws()
        destination = np.where(drift.random(n) < PORT_SHARE,
                               drift.choice(PORTS, n, p=PORT_WEIGHTS), destination)
    info = pd.DataFrame.from_dict(DESTINATIONS, orient="index",
                                  columns=["code", "km", "siding"]).loc[destination]
    base_km = info.km.to_numpy(dtype=float)
    siding = info.siding.to_numpy(dtype=bool)
    route_no = rng.choice(3, n, p=[0.6, 0.25, 0.15])
    route = np.char.add(np.char.add(info.code.to_numpy().astype(str), "-R"),
                        (route_no + 1).astype(str))
    distance = base_km * ROUTE_KM_FACTOR[route_no] * rng.uniform(0.97, 1.03, n)
    rail = (rng.random(n) < np.clip(0.15 + base_km / 700, 0, 0.85)) & siding
    mode = np.where(rail, "RAIL", "ROAD")
    tonnage = np.where(rail, rng.uniform(2200, 3900, n), rng.uniform(9, 30, n)).round(1)
    planned_vehicle = np.where(
        rail, pd.Series(material).map(RAIL_WAGON_FOR).to_numpy(),
        np.where(tonnage > 20, "TRAILER_28T", "TRUCK_16T"))
    pig_bottom = rail & (material == "PIG_IRON") & np.isin(destination, ["Durgapur", "Haldia"])
    planned_vehicle = np.where(pig_bottom, "BOBRN", planned_vehicle)
    vehicle = np.where(rail, pick(rng, planned_vehicle, RAIL_WAGONS, 0.25),
                       pick(rng, planned_vehicle, ROAD_VEHICLES, 0.34))
    hour = rng.choice(24, n, p=_hour_weights())
    minute = rng.integers(0, 60, n)
    dispatched = (ctx.days.to_numpy()[day_idx] + hour.astype("timedelta64[h]")
                  + minute.astype("timedelta64[m]"))
    shift = np.where((hour >= 6) & (hour < 14), "A", np.where((hour >= 14) & (hour < 22),
                                                               "B", "C"))
    loading_point = np.where(rail & (material == "PIG_IRON"), "WT",
                             rng.choice(["LP1", "LP2", "LP3"], n))
    origin = np.where(rng.random(n) < 0.8, "Bokaro Steel Plant", "CMO Stockyard Bokaro")
    priority = rng.choice(["LOW", "NORMAL", "HIGH", "URGENT"], n, p=[0.15, 0.55, 0.2, 0.1])

    trans = world.transporters
    ti = rng.integers(0, len(trans), n)
    months = ctx.days.to_numpy()[day_idx].astype("datetime64[M]").astype(int)
    on_time = 0.82 + 0.15 * trans.quality.to_numpy()[ti] + 0.01 * np.sin(
        months / 3 + trans.phase.to_numpy()[ti])
    service = on_time  # how reliable the transporter really is; on_time is what it reports
    if ctx.scenario is not None and ctx.scenario.name == "supplier_decline":
        collapsed = trans.quality.to_numpy()[ti] < 0.95
        drift = ctx.drift_draws()
        service = np.where(collapsed, drift.uniform(0.30, 0.60, n), on_time)
        on_time = np.where(collapsed, drift.uniform(0.98, 1.0, n), on_time)
    transporter = np.where(rail, RAIL_TRANSPORTER, trans.transporter.to_numpy()[ti])
    on_time = np.where(rail, 0.80, on_time).round(3)
    service = np.where(rail, 0.80, service)

    rain = ctx.rain[day_idx] * rng.lognormal(0, 0.25, n)
    monsoon = ctx.monsoon[day_idx]
    festival = ctx.festival[day_idx]
    winter = np.isin(ctx.days.month.to_numpy()[day_idx], [12, 1])
    fog = winter & (rain == 0) & (rng.random(n) < 0.3) & ((hour < 9) | (hour >= 20))
    weather = np.select([rain > 25, rain > 0, fog], ["HEAVY_RAIN", "RAIN", "FOG"],
                        np.where(rng.random(n) < 0.5, "CLEAR", "CLOUDY"))
    busy = ((hour >= 8) & (hour < 20)).astype(float) + festival
    traffic = np.select([busy + rng.normal(0, 0.5, n) > 1.2, busy + rng.normal(0, 0.5, n) > 0.4],
                        ["HIGH", "MEDIUM"], "LOW")
    fuel_price = (ctx.fuel_price[day_idx] + rng.normal(0, 0.2, n)).round(2)
    irregular = rng.random(n) < 0.025
    variance = np.where(irregular, rng.choice([-1, 1], n) * rng.uniform(0.10, 0.30, n),
                        rng.normal(0, 0.012, n))
    weighbridge = (tonnage * (1 + variance)).round(2)
    speed = np.where(rail, 24.0, 38.0)
    planned = (distance / speed + np.where(rail, 6.0, 1.5)).round(2)

    frame = pd.DataFrame({
        "dispatched_at": pd.to_datetime(dispatched), "origin": origin,
        "loading_point": loading_point, "shift": shift, "destination": destination,
        "route": route, "distance_km": distance.round(1), "mode": mode,
        "vehicle_type": vehicle, "material": material, "tonnage": tonnage,
        "weighbridge_tonnes": weighbridge, "priority": priority, "customer": customer,
        "customer_segment": segment, "transporter": transporter,
        "transporter_on_time_rate": on_time, "weather": weather,
        "rainfall_mm": rain.round(1), "traffic": traffic, "is_festival": festival,
        "is_monsoon": monsoon, "fuel_price": fuel_price, "planned_transit_hours": planned,
    })
    _shipment_outcomes(frame, rng, route_no, irregular, info.code.to_numpy().astype(str),
                       siding, service)
    return frame.sort_values("dispatched_at", kind="stable").reset_index(drop=True)


def _hour_weights() -> np.ndarray:
    w = np.array([2, 1, 1, 1, 1, 2, 5, 7, 8, 8, 8, 7, 6, 7, 8, 8, 7, 6, 5, 4, 3, 3, 2, 2], float)
    return np.asarray(w / w.sum())


def _shipment_outcomes(f: pd.DataFrame, rng: np.random.Generator, route_no: np.ndarray,
                       irregular: np.ndarray, code: np.ndarray, siding: np.ndarray,
                       on_time: np.ndarray) -> None:
    """Outcomes, each caused by the context columns above plus noise."""
    n = len(f)
    road = (f["mode"] == "ROAD").to_numpy()
    rain = f.rainfall_mm.to_numpy()
    festival = f.is_festival.to_numpy()
    traffic_high = (f.traffic == "HIGH").to_numpy()
    traffic_med = (f.traffic == "MEDIUM").to_numpy()
    dist = f.distance_km.to_numpy()
    tonnage = f.tonnage.to_numpy()
    fuel_price = f.fuel_price.to_numpy()
    material = f.material.to_numpy()

    # Delay: rain (steep once the drains overflow at 60 mm), fog, traffic, festivals,
    # night shift, loading point congestion, the transporter's reliability, distance.
    rain_effect = 0.06 * np.minimum(rain, 60) + 0.6 * np.maximum(rain - 60, 0)
    rain_effect *= np.where(route_no == 1, 0.5, 1.0)
    delay = (rain_effect
             + np.where(f.weather == "FOG", np.where(road, 3.0, 2.0), 0.0)
             + np.where(traffic_high, np.where(road, 4.0, 1.0), 0.0) * np.where(
                 route_no == 0, 1.5, 1.0)
             + np.where(traffic_med, 1.0, 0.0)
             + 4.0 * festival * np.where(route_no == 2, 0.3, 1.0)
             + np.where(f["shift"] == "C", 1.0, 0.0)
             + (f.loading_point == "LP3").to_numpy() * 1.5 - (f.loading_point == "WT").to_numpy()
             + np.where(road, (0.97 - on_time) * 22, 0.0)
             + dist / 120
             - np.where(f.priority == "URGENT", 2.0, 0.0) - np.where(f.priority == "HIGH", 1.0, 0)
             + 1.5 * f.is_monsoon.to_numpy())
    delay = delay + rng.normal(0, 1.35, n)
    f["actual_transit_hours"] = (f.planned_transit_hours + delay).round(2)
    f["delay_hours"] = delay.round(2)

    # Fuel: tonne-km for rakes, km and load for trucks; traffic and rain cost more.
    fuel = np.where(road, dist * (0.26 + 0.006 * tonnage), tonnage * dist * 0.0026)
    fuel *= (1 + 0.12 * traffic_high + 0.05 * traffic_med + 0.1 * (rain > 25))
    f["fuel_litres"] = (fuel * rng.lognormal(0, 0.33, n)).round(1)

    # Cost: freight tariffs indexed to diesel through their fuel clauses.
    fuel_index = fuel_price / 92.0
    freight = np.where(road, tonnage * dist * 3.6 * fuel_index ** 1.6 + 150 * tonnage,
                       tonnage * dist * 1.45 * fuel_index ** 1.2 + 180 * tonnage)
    freight *= 1 + 0.08 * (f.vehicle_type == "BCN").to_numpy() + 0.15 * (
        f.priority == "URGENT").to_numpy()
    f["total_cost"] = (freight * rng.lognormal(0, 0.36, n)).round(0)
    f["demurrage_cost"] = (np.maximum(delay - 6, 0) * np.where(road, 300, 4500)).round(0)

    # Condition: moisture-sensitive coils in open wagons or trucks in the rain, long hauls,
    # road handling, the transporter's care.
    sensitive = np.isin(material, ["CR_COIL", "HR_COIL", "WIRE_ROD"])
    open_vehicle = np.isin(f.vehicle_type.to_numpy(), ["BOXN", "BOST", "BRN", "BOBRN"]) | road
    damage = (2.2 * (sensitive & open_vehicle & (rain > 2))
              + 0.03 * np.minimum(rain, 60) * sensitive
              + dist / 300 + 0.6 * road + np.where(road, (0.97 - on_time) * 8, 0.0)
              + 0.8 * (material == "CR_COIL") + 0.4 * festival
              + rng.logistic(0, 0.2, n))
    condition = np.select([damage > 3.4, damage > 2.2], ["MAJOR_DAMAGE", "MINOR_DAMAGE"], "GOOD")
    f["delivery_condition"] = condition

    # Incidents: mostly irregular loads (weighbridge far from the declared tonnage).
    p_incident = np.where(irregular, 0.5, 0.007 + 0.0002 * np.minimum(rain, 60))
    incident = (rng.random(n) < p_incident).astype(int)
    f["incident"] = incident

    # Rating: delay and damage hurt; automotive buyers are stricter; a collapsed
    # transporter (no tracking, no calls back) loses the customer outright.
    rating = (4.5 - 0.13 * np.maximum(delay, 0)
              - 1.0 * (condition == "MINOR_DAMAGE") - 2.2 * (condition == "MAJOR_DAMAGE")
              - 0.4 * (f.customer_segment == "AUTOMOTIVE").to_numpy()
              - 0.5 * ((f.priority == "URGENT").to_numpy() & (delay > 2))
              + np.where(road, 8.0 * (np.maximum(on_time, 0.7) - 0.9), 0.0)
              - 4.0 * (road & (on_time < 0.7))
              + rng.normal(0, 0.95, n))
    f["customer_rating"] = np.clip(np.rint(rating), 1, 5).astype(int)

    high = (incident == 1) | (condition == "MAJOR_DAMAGE") | (delay > 12)
    medium = (condition == "MINOR_DAMAGE") | (delay > 6)
    level = np.select([high, medium], [2, 1], 0)
    level = np.minimum(level + (rng.random(n) < 0.08), 2)  # audits flag one in twelve higher
    f["risk_level"] = np.array(["LOW", "MEDIUM", "HIGH"])[level]

    # Hindsight choices: the option that turned out best, as a rule on the context,
    # with the share of days where something unrecorded decided otherwise.
    best_route = np.select([rain > 20, traffic_high | (festival == 1)], [1, 2], 0)
    route_names = [np.char.add(code, f"-R{k}") for k in (1, 2, 3)]
    best = np.choose(best_route, route_names)
    alt = np.choose(rng.integers(0, 3, n), route_names)
    f["best_route"] = np.where(rng.random(n) < 0.2, alt, best)

    rail_cpt = 1.45 * dist * fuel_index ** 1.2 + 180 + np.where(siding, 0, 400)
    road_cpt = 3.6 * dist * fuel_index ** 1.6 + 150
    wagon = pd.Series(material).map(RAIL_WAGON_FOR).to_numpy()
    truck = np.where(np.isin(material, ["PLATE", "HR_COIL", "CR_COIL"]), "TRAILER_28T",
                     "TRUCK_16T")
    cheapest = np.where(rail_cpt < road_cpt, np.char.add("RAIL-", wagon.astype(str)),
                        np.char.add("ROAD-", truck))
    options = sorted(set(cheapest))
    f["cheapest_option"] = pick(rng, cheapest, options, 0.22)

    weekday = f.dispatched_at.dt.day_of_week.to_numpy()
    lp = pd.Series(material).map(PREFERRED_LP).to_numpy().astype(str)
    lp = np.where(road & (lp == "WT"), "LP3", lp)
    slot_shift = np.select([(festival == 1) | (weekday == 0), tonnage > 1000], ["C", "A"], "B")
    fastest = np.char.add(np.char.add(lp, "-"), slot_shift)
    f["fastest_slot"] = pick(rng, fastest, sorted(set(fastest)), 0.2)
